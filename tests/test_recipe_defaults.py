"""Recipes read the model: defaults that depend on the model (pag's and stg's layers and scale, enhance_a_video's
weight) are resolved from the adapter's family and the model's depth when the session attaches, so the default of
every recipe steers on every tiny pipeline of a family it supports (dymos too, whose defaults are model-free);
explicit ``layers=`` still wins."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer import recipes
from attnsteer.contract.registry import find_adapter
from attnsteer.errors import ConfigError, SteeringError
from attnsteer.recipes.enhance_a_video import AUTHORS_WEIGHTS
from attnsteer.recipes.perturbed import AUTHORS_LAYERS
from attnsteer.testing.tiny import TINY_MODELS, build_tiny, test_image
from test_families import CASES

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 2  # Mochi's schedule needs two
EAV_FAMILIES = set(AUTHORS_WEIGHTS)
NO_BLOCKS, UNKNOWN_BLOCK = "finds no blocks", r"cannot skip a \w+ block"
STG_R_REFUSED = {  # the families whose blocks STG-R cannot skip today (no blocks, or a block of unknown signature)
    "tiny-svd": NO_BLOCKS,
    **{name: UNKNOWN_BLOCK for name in ("tiny-allegro", "tiny-anyflow", "tiny-chronoedit", "tiny-consisid",
                                        "tiny-cosmos2", "tiny-easyanimate", "tiny-easyanimate-control",
                                        "tiny-easyanimate-inpaint", "tiny-helios", "tiny-hunyuan15", "tiny-ltx2",
                                        "tiny-skyreels-v2-df", "tiny-wan-animate")},
}


def _run(pipe, name: str, *items, **extra) -> tuple[np.ndarray, dict]:
    case = CASES[name]
    image = {} if case.image_size is None else {case.image_arg: test_image(case.image_size)}
    kwargs = TINY_MODELS[name][1](output_type="latent", num_inference_steps=STEPS, **case.extra())
    if "guidance_rescale" in inspect.signature(pipe.__call__).parameters:  # perturbed guidance refuses a rescale
        kwargs["guidance_rescale"] = 0.0  # (LTX-2's pipeline default is 0.7), as not the published formula
    with warnings.catch_warnings():
        warnings.simplefilter("error", at.AttnsteerWarning)  # a default matching no module would warn: fail on it
        with at.steer(pipe, *items, **extra) as steering:
            out = pipe(**image, generator=torch.Generator().manual_seed(0), **kwargs).frames
    return np.asarray(out), steering.summary()


def _family(pipe, name: str) -> str:
    return find_adapter(getattr(pipe, CASES[name].denoisers[0])).family


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_every_model_dependent_recipe_default_steers_on_every_tiny_pipeline(name):
    pipe, _ = build_tiny(name)
    family = _family(pipe, name)
    for recipe in (recipes.pag(), recipes.stg(mode="A"), recipes.ultravico(), recipes.proportional_attention(),
                   recipes.dymos()):
        _, summary = _run(pipe, name, recipe)
        assert summary["attention_calls_steered"] > 0, f"{recipe!r} steered nothing on {name}"
    if name in STG_R_REFUSED:  # STG-R skips whole blocks: where attnsteer cannot, it is refused, naming why
        with pytest.raises(SteeringError, match=STG_R_REFUSED[name]):
            _run(pipe, name, recipes.stg(mode="R"))
    else:
        _, summary = _run(pipe, name, recipes.stg(mode="R"))
        assert summary["blocks_skipped"], f"stg(mode='R') skipped no block on {name}"
    if family in EAV_FAMILIES:
        _, summary = _run(pipe, name, recipes.enhance_a_video())
        assert summary["attention_calls_steered"] > 0
    else:  # the authors published weights for three families only: elsewhere it asks for one
        with pytest.raises(ConfigError, match=f"no weight for model family {family!r}"):
            _run(pipe, name, recipes.enhance_a_video())


@pytest.fixture(scope="module")
def wan():
    return build_tiny("tiny-wan")[0]


def test_pag_default_on_tiny_wan_is_the_middle_module_when_the_authors_layer_is_too_deep(wan):
    default, summary = _run(wan, "tiny-wan", recipes.pag())
    explicit, _ = _run(wan, "tiny-wan", recipes.pag(layers="1"))
    assert summary["rules"][0]["layers"] == ["transformer.blocks.1.attn1"]
    np.testing.assert_array_equal(default, explicit)


def test_stg_default_takes_the_authors_wan_scale_from_the_model(wan):
    default, summary = _run(wan, "tiny-wan", recipes.stg())
    wan_scale, _ = _run(wan, "tiny-wan", recipes.stg(scale=2.0, layers="1"))
    other_scale, _ = _run(wan, "tiny-wan", recipes.stg(scale=1.0, layers="1"))
    assert summary["blocks_skipped"] == ["transformer.blocks.1"]
    np.testing.assert_array_equal(default, wan_scale)
    assert not np.array_equal(default, other_scale)


def test_explicit_layers_still_win_over_the_model_default(wan):
    _, pag = _run(wan, "tiny-wan", recipes.pag(layers="0"))
    _, stg = _run(wan, "tiny-wan", recipes.stg(mode="R", layers="0"))
    assert pag["rules"][0]["layers"] == ["transformer.blocks.0.attn1"]
    assert stg["blocks_skipped"] == ["transformer.blocks.0"]


def test_layer_fraction_resolves_by_depth():
    depth = lambda n: at.ModelDepth("any", n)  # noqa: E731
    assert at.layer_fraction(1 / 3, 2 / 3).indices(depth(30)) == tuple(range(10, 20))
    assert at.layer_fraction(1 / 3, 2 / 3).indices(depth(42)) == tuple(range(14, 28))
    assert at.layer_fraction(1 / 3, 2 / 3).indices(depth(2)) == (0, 1)
    assert at.layer_fraction(1 / 3, 2 / 3).indices(depth(1)) == (0,)
    assert at.layer_fraction(0.5).indices(depth(30)) == (15,)
    assert at.layer_fraction(1.0).indices(depth(4)) == (3,)


def test_family_layers_take_the_authors_layers_where_the_model_has_them():
    layers = AUTHORS_LAYERS
    assert layers.indices(at.ModelDepth("cogvideox", 30)) == (11,)
    assert layers.indices(at.ModelDepth("wan", 30)) == (2,)
    assert layers.indices(at.ModelDepth("mochi", 48)) == (34,)
    assert layers.indices(at.ModelDepth("mochi", 2)) == (1,)  # too shallow: the middle module
    assert layers.indices(at.ModelDepth("allegro", 32)) == (16,)  # unpublished family: the middle module


def test_model_relative_layers_in_a_rule_resolve_per_model():
    rule = at.Rule(at.video, at.video, at.bias(-1.0), layers=at.family_layers({"wan": 2}, otherwise=at.layer_fraction(0.5)))
    assert [i for i in range(30) if rule.matches_layer(i, [f"blocks.{i}"], at.ModelDepth("wan", 30))] == [2]
    assert [i for i in range(8) if rule.matches_layer(i, [f"blocks.{i}"], at.ModelDepth("ltx", 8))] == [4]
    with pytest.raises(SteeringError, match="relative to the model"):
        rule.matches_layer(0, ["blocks.0"])


@pytest.mark.parametrize("bad, match", [
    (lambda: at.layer_fraction(1.5), r"layer_fraction\(start=...\) must be a depth fraction"),
    (lambda: at.layer_fraction(0.5, 0.25), "stop must be > start"),
    (lambda: at.family_layers({}), "non-empty mapping"),
    (lambda: at.family_layers({"wan": -1}), r"family_layers\(table=...\)\['wan'\] must be an int >= 0"),
    (lambda: at.family_layers({"wan": 2}, otherwise=3), "otherwise"),
])
def test_bad_model_relative_layers_fail_at_construction(bad, match):
    with pytest.raises(ConfigError, match=match):
        bad()


def test_family_argument_is_deprecated_but_still_picks_the_authors_values():
    with pytest.warns(DeprecationWarning, match=r"stg\(family=...\) is deprecated"):
        made = recipes.stg(family="cogvideox")
    assert made.guidance.skip_blocks == (11,) and made.guidance.scale == 1.0
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match=r"pag\(family=...\) must be one of"):
        recipes.pag(family="sd15")
