"""The extension API without a model run: declarative adapters (checked at class definition, registered
without hook code, refused families), @recipe (typed parameters, CLI parsing), the family table in step
with docs/models.md, and test helpers that pytest does not collect."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

import attnsteer as at
from attnsteer.language import recipe as recipe_registry
from attnsteer.cli import main
from attnsteer.contract import registry as manager
from attnsteer.plugins.table import family_rows, markdown_table
from attnsteer.language.recipe import recipe

ROOT = Path(__file__).resolve().parent.parent


class Toy(torch.nn.Module):
    pass


def declare(**facts):
    """An adapter class with the given class attributes (a layout that puts 2 text tokens as declared)."""
    def layout(self, model, inputs):
        """Two frames of a 1x3 grid."""
        return self.token_layout(2, (1, 3), text=2 if self.text in ("joint-before", "joint-after") else 0)

    return type("ToyAdapter", (at.Adapter,), {"family": "toy", "model_classes": ("Toy",), "layout": layout, **facts})


@pytest.mark.parametrize("field, value, allowed", [
    ("text", "middle", "joint-before"),
    ("branches", "sometimes", "batched-uncond-cond"),
    ("self_attention", "blocks.(", "regex"),
    ("model_classes", "Toy", "tuple of class names"),
    ("reference_frames", (-1,), "frame indices"),
    ("family", "", "non-empty"),
])
def test_bad_declarations_fail_when_the_class_is_defined(field, value, allowed):
    with pytest.raises(at.ConfigError, match=rf"ToyAdapter\.{field} must .*{re.escape(allowed)}"):
        declare(**{field: value})


def test_declarations_become_behaviour():
    adapter = declare(text="joint-before", branches="batched-uncond-cond", self_attention=r"layers\.\d+")()
    assert type(adapter).branches == "batched-uncond-cond" and "[uncond, cond]" in type(adapter).branches.description
    assert adapter.branches(None, {}, "cond_uncond", 4, None) is None  # no pipeline: guidance unknown
    assert adapter.branches(None, {}, "pred_cond", 2, None) == ("cond", "cond")
    layout = adapter.layout(Toy(), {})
    assert (layout.video_start, layout.segments[0].start, layout.grid) == (2, 0, (1, 3))
    after = declare(text="joint-after")().layout(Toy(), {})
    assert (after.video_start, after.segments[0].start) == (0, 6)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)])
    assert [name for name, _ in adapter.attention_modules(model)] == ["layers.0", "layers.1"]
    assert adapter.matches(Toy()) and not adapter.matches(model)


def test_forward_order_branches_keep_their_state_per_adapter():
    cls = declare(branches="forward-order")
    first, second = cls(), cls()
    latent = torch.zeros(1)
    assert first.branches(None, {"hidden_states": latent}, None, 1, None) == ("cond",)
    assert second.branches(None, {"hidden_states": latent}, None, 1, None) == ("cond",)
    assert first.branches(None, {"hidden_states": latent}, None, 1, None) == ("uncond",)
    assert first.branches(None, {"hidden_states": latent}, None, 1, None) is None  # a third forward: not guessed


@pytest.fixture
def registered():
    """Register adapter classes in the process's plugin manager for one test."""
    names = []

    def register(cls):
        manager.register(manager.plugin_manager(), cls, f"test:{len(names)}")
        names.append(f"test:{len(names)}:{cls.__name__}")

    yield register
    for name in names:
        manager.plugin_manager().unregister(name=name)


def test_a_registered_declaration_is_found_and_a_refused_family_raises_its_reason(registered):
    registered(declare(self_attention=r"x"))
    assert type(manager.find_adapter(Toy())).__name__ == "ToyAdapter"
    assert "toy" in manager.supported_families()
    registered(declare(self_attention=r"x", refusal="its attention is linear; no softmax logits to steer"))
    with pytest.raises(at.UnsupportedModelError, match="Toy \\(toy\\) cannot be steered .* linear"):
        at.steer(Toy(), at.Rule(at.frames[1:], at.frames[0], at.bias(1.0)))


def test_built_in_adapters_claim_distinct_classes_and_live_one_family_per_class():
    claimed = [c for cls in manager.registered_adapters() for c in cls.model_classes]
    assert len(claimed) == len(set(claimed))
    assert all(cls.__module__.startswith("attnsteer.plugins.") for cls in manager.registered_adapters())


def test_models_command_prints_the_table_of_docs_models_md(capsys):
    assert main(["models", "--markdown"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == markdown_table(family_rows())
    docs = (ROOT / "docs" / "models.md").read_text()
    documented = docs.split("<!-- family table: attnsteer models --markdown -->\n")[1].split("\n<!-- end")[0]
    assert documented == printed, "docs/models.md is out of step: paste `attnsteer models --markdown` into it"
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert all(f"{cls.family} (" in text for cls in manager.registered_adapters())


# --- recipes ------------------------------------------------------------------------------------------------------


@pytest.fixture
def registry():
    """The recipe registry restored after the test."""
    saved = dict(recipe_registry._REGISTRY)
    yield recipe_registry._REGISTRY
    recipe_registry._REGISTRY.clear()
    recipe_registry._REGISTRY.update(saved)


def test_recipe_parameters_are_typed_and_checked(registry):
    @recipe(choices={"mode": ("a", "b")}, help={"strength": "how much"})
    def nudge(strength: float = 1.0, steps: int | None = None, mode: str = "a", fast: bool = False) -> at.Recipe:
        """Nudge something.

        More text that is not the description."""
        return at.Recipe("nudge", (), {"strength": strength, "steps": steps, "mode": mode, "fast": fast})

    assert nudge.description == "Nudge something." and registry["nudge"] is nudge
    assert [(p.name, p.type_name) for p in nudge.parameters] == [
        ("strength", "float"), ("steps", "int | None"), ("mode", "str"), ("fast", "bool")]
    assert repr(nudge(2, steps=3)) == "nudge(strength=2, steps=3, mode='a', fast=False)"
    for kwargs, message in [({"strength": "x"}, r"nudge\(strength=\.\.\.\) must be a real number"),
                            ({"steps": 1.5}, r"nudge\(steps=\.\.\.\) must be an int"),
                            ({"mode": "c"}, r"nudge\(mode=\.\.\.\) must be one of \('a', 'b'\)"),
                            ({"fast": 1}, r"nudge\(fast=\.\.\.\) must be true or false"),
                            ({"strenght": 1}, "unexpected keyword argument 'strenght'")]:
        with pytest.raises(at.ConfigError, match=message):
            nudge(**kwargs)
    parse = {p.name: p for p in nudge.parameters}
    assert parse["steps"].parse("none", "nudge") is None and parse["steps"].parse("4", "nudge") == 4
    assert parse["fast"].parse("yes", "nudge") is True and parse["strength"].parse("-1e-3", "nudge") == -0.001
    with pytest.raises(at.ConfigError, match=r"nudge\(strength=\.\.\.\) must not be NaN"):
        parse["strength"].parse("nan", "nudge")


def test_bad_recipe_declarations_raise(registry):
    def untyped(x=1):
        """Untyped."""

    def no_doc(x: float = 1.0):
        pass

    def listy(x: list = ()):
        """A list parameter."""

    for function, message in [(untyped, "must be annotated"), (no_doc, "docstring"), (listy, "must be annotated")]:
        with pytest.raises(at.ConfigError, match=message):
            recipe(function)
    with pytest.raises(at.ConfigError, match="help/choices name parameters it does not have"):
        recipe(help={"y": "?"})(lambda x: None)

    def dymos(gamma: float = 1.0) -> at.Recipe:
        """Another dymos."""

    with pytest.raises(at.ConfigError, match="recipe name 'dymos' .* is taken by attnsteer.recipes.dymos"):
        recipe(dymos)


@pytest.mark.parametrize("argv, message", [
    (["--param", "gamma=1"], "--param gamma=1 set a recipe parameter but no --recipe"),
    (["--recipe", "dymos", "--param", "gama=1"], "recipe 'dymos' has no parameter 'gama'; its parameters: gamma"),
    (["--recipe", "dymos", "--param", "gamma"], "--param expects KEY=VALUE"),
    (["--recipe", "dymos", "--gamma", "1", "--param", "gamma=2"], "'gamma' is given twice"),
    (["--recipe", "dymos", "--param", "until_step=soon"], "dymos(until_step=...) must be an int"),
    (["--recipe", "pag", "--gamma", "1"], "recipe 'pag' has no parameter 'gamma'"),
])
def test_recipe_options_fail_with_one_line(tmp_path, capsys, argv, message):
    assert main(["run", "--model", "tiny-wan", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_recipes_command_lists_descriptions_and_parameters(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for spec in recipe_registry.available_recipes().values():
        assert f"{spec.name}({spec.signature_text()})  [{spec.source}]\n    {spec.description}\n" in out
    assert "--param gamma=<float>  logit bias -gamma" in out


# --- test helpers ------------------------------------------------------------------------------------------------


def test_test_helpers_are_not_collected_by_pytest():
    """pytest collects functions named test* that a test module imports, unless they say ``__test__ = False``."""
    package = importlib.import_module("attnsteer.testing")
    for info in __import__("pkgutil").iter_modules(package.__path__):
        module = importlib.import_module(f"attnsteer.testing.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("test") and inspect.isfunction(obj) and obj.__module__ == module.__name__:
                assert obj.__test__ is False, f"attnsteer.testing.{info.name}.{name} would be collected as a test"
