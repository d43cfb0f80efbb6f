"""One public way to extend: the base classes are exported, a transform's kernel path is its declared ``kind``
(nothing else is read), every shipped recipe is declared with ``@recipe``, a misspelled hook fails at plugin load,
and no private name crosses modules."""

from __future__ import annotations

import ast
import importlib
import math
import types
from pathlib import Path

import attrs
import pluggy
import pytest
import torch

import attnsteer as at
from attnsteer.contract import hookspecs, registry
from attnsteer.contract.hookspecs import hookimpl
from attnsteer.language.recipe import RecipeSpec
from attnsteer.language.selectors import SelectionContext
from attnsteer.language.transforms import TRANSFORM_KINDS
from attnsteer.runtime.plan import build_plan

LAYOUT = at.TokenLayout(num_frames=3, tokens_per_frame=2)
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("base, example", [
    ("Transform", at.bias(1.0)), ("OutputTransform", at.output_scale(2.0)), ("Selector", at.frames[0]),
    ("Pairs", at.same_location()), ("Schedule", at.steps(stop=2)), ("Readout", at.readouts.cross_frame_intensity()),
    ("PerturbedGuidance", at.PerturbedGuidance(2.0)),
])
def test_the_base_classes_extensions_subclass_are_public_names(base, example):
    assert base in at.__all__
    assert isinstance(example, getattr(at, base))


@pytest.mark.parametrize("transform, kind", [
    (at.bias(-1.0), "constant"), (at.scale(0.5), "constant"), (at.block(), "constant"),
    (at.query_bias(torch.zeros(6)), "per_query"), (at.query_bias(torch.zeros(6)).bind(LAYOUT), "per_query"),
    (at.identity(), "identity"), (at.output_scale(2.0), "output"), (at.logit_scale(2.0), "score"),
    (at.fill(0.0), "score"), (at.scale_if_positive(0.5), "score"), (at.score_mod(lambda s, b, h, q, k: s), "score"),
    (at.proportional(8), "score"),
])
def test_every_built_in_transform_declares_its_kernel_path(transform, kind):
    assert transform.kind == kind and kind in TRANSFORM_KINDS
    assert transform.identity == (kind == "identity")


def test_a_transform_kind_outside_the_contract_is_refused_when_the_class_is_defined():
    with pytest.raises(at.ConfigError, match=r"Flex.kind must be one of .*'constant'.*got 'flex'"):
        type("Flex", (at.Transform,), {"kind": "flex"})


@attrs.frozen
class Halve(at.Transform):
    """Halve the attention weight: a constant logit bias of log(1/2), declared with ``kind``."""

    kind = "constant"

    @property
    def constant_bias(self) -> float:
        return math.log(0.5)


@attrs.frozen
class HalveByScore(at.Transform):
    """The same edit computed by ``score`` (the default kind): the plan must not look at ``constant_bias``."""

    constant_bias = math.log(0.5)  # present but not declared: a duck-typed attribute the plan must ignore

    def score(self, s, b, h, q_idx, kv_idx):
        return s + math.log(0.5)


def plan_for(transform: at.Transform):
    rule = at.Rule(at.frames[1:], at.frames[0], transform)
    return build_plan(((rule, SelectionContext(LAYOUT)),), LAYOUT, None, 1, 1)


def test_the_plan_takes_the_path_the_kind_declares_and_no_other():
    grouped, scored = plan_for(Halve()), plan_for(HalveByScore())
    assert grouped.path == "grouped" and scored.path == "scored"
    expected = torch.zeros(3, 3)
    expected[1:, 0] = math.log(0.5)
    assert torch.equal(grouped.bias, expected)  # cells == frames here: the bias rows 1.., column 0


def test_both_paths_give_the_same_attention_as_a_float64_computation():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, LAYOUT.seq_len, 4) for _ in range(3))
    frame = torch.arange(LAYOUT.seq_len) // LAYOUT.tokens_per_frame
    bias = torch.where((frame >= 1)[:, None] & (frame == 0)[None, :], math.log(0.5), 0.0).double()
    expected = ((q.double() @ k.double().transpose(-1, -2)) / 2 + bias).softmax(-1) @ v.double()

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()

        def forward(self, q, k, v):
            return self.attn(q, k, v)

    model, adapter = Model(), at.GenericAdapter(layout=LAYOUT, attention="attn")
    for transform in (Halve(), HalveByScore()):
        with at.steer(model, at.Rule(at.frames[1:], at.frames[0], transform), adapter=adapter):
            out = model(q, k, v)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=64 * torch.finfo(torch.float32).eps)


def test_a_constant_kind_without_its_value_is_a_steering_error_naming_the_rule():
    @attrs.frozen
    class Empty(at.Transform):
        kind = "constant"

    with pytest.raises(at.SteeringError, match=r"declares kind 'constant' but its constant_bias is None"):
        plan_for(Empty())


def test_a_selector_whose_mask_is_not_bool_per_token_is_a_config_error():
    @attrs.frozen
    class Broken(at.Selector):
        group_level = False

        def compute_mask(self, ctx):
            return torch.ones(ctx.layout.seq_len)  # float, not bool

    with pytest.raises(at.ConfigError, match=r"compute_mask\(ctx\) must return a bool tensor \[seq_len\] = \[6\]"):
        Broken().token_mask(SelectionContext(LAYOUT))


def test_a_misspelled_hook_implementation_is_refused_at_plugin_load_naming_the_hook_and_the_module():
    plugin = types.ModuleType("my_video_plugin")

    @hookimpl
    def attnsteer_adaptor(model):
        return None

    plugin.attnsteer_adaptor = attnsteer_adaptor
    pm = pluggy.PluginManager("attnsteer")
    pm.add_hookspecs(hookspecs)
    with pytest.raises(at.ConfigError, match=r"unknown hook 'attnsteer_adaptor' in plugin <module 'my_video_plugin'>"
                                             r".*\['attnsteer_adapter'\]"):
        registry.register(pm, plugin, "my_video_plugin")
    assert not pm.get_plugins()  # left out, not half registered


def test_a_correctly_spelled_hook_implementation_still_registers():
    plugin = types.ModuleType("fine_plugin")

    @hookimpl
    def attnsteer_adapter(model):
        return None

    plugin.attnsteer_adapter = attnsteer_adapter
    pm = pluggy.PluginManager("attnsteer")
    pm.add_hookspecs(hookspecs)
    registry.register(pm, plugin, "fine_plugin")
    assert pm.get_plugins() == {plugin}


def test_every_shipped_recipe_is_declared_with_recipe_in_its_own_module():
    recipes = importlib.import_module("attnsteer.recipes")
    for name, spec in recipes.RECIPES.items():
        module = importlib.import_module(spec.function.__module__)
        assert isinstance(vars(module)[spec.function.__name__], RecipeSpec), f"{name}: not decorated in {module}"


def test_no_private_name_is_imported_from_another_module():
    crossing = []
    for path in sorted([*(ROOT / "src" / "attnsteer").rglob("*.py"), *(ROOT / "recipes").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                crossing += [f"{path.relative_to(ROOT)}: {alias.name}" for alias in node.names
                             if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not crossing, "private names imported across modules:\n" + "\n".join(crossing)
