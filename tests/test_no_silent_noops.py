"""Nothing the user asked for is dropped in silence (issue 22 §3): a recipe without rules still acts, a
recipe that can apply nowhere or returns nothing is refused, bad outputs are refused up front, flags a
model cannot honour are refused, and what matched nothing is reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.cli import main
from attnsteer.errors import ConfigError
from attnsteer.figures.videoio import load_video
from attnsteer.language import recipe as recipe_module
from attnsteer.recipes import stg

COG = ["--model", "tiny-cogvideox", "--steps", "1", "--format", "gif"]


def test_a_recipe_without_rules_is_true():
    made = stg(mode="R", layers="1")
    assert len(made) == 0 and bool(made)


def test_cli_run_applies_stg_r_which_has_no_rules(tmp_path):
    assert main(["run", *COG, "--out", str(tmp_path / "vanilla")]) == 0
    assert main(["run", *COG, "--recipe", "stg", "--mode", "R", "--layers", "1",
                 "--out", str(tmp_path / "stg")]) == 0
    record = json.loads((tmp_path / "stg" / "run.json").read_text())
    assert record["recipe"] == "stg(mode='R', layers='1')"  # the scale is read from the model (CogVideoX: 1.0)
    assert record["applied"]["given"] == [record["recipe"]]
    vanilla, steered = (load_video(tmp_path / name / "video.gif") for name in ("vanilla", "stg"))
    assert vanilla.shape == steered.shape and not np.array_equal(vanilla, steered)


@pytest.mark.parametrize("command", ["run", "inspect"])
@pytest.mark.parametrize("recipe", ["stg", "pag"])
def test_cli_recipe_whose_layers_match_no_module_exits_2_before_generating(tmp_path, capsys, command, recipe):
    out = tmp_path / "out"
    assert main([command, *COG, "--recipe", recipe, "--layers", "9", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "9" in err and ("out of range" in err or "matches none" in err)
    assert not list(out.glob("video.*"))


def test_a_recipe_returning_none_is_refused_naming_it():
    def returns_nothing(strength: float = 1.0) -> at.Recipe:
        """A broken third-party recipe: forgets to return its Recipe."""

    spec = recipe_module.recipe(returns_nothing, name="test_returns_nothing")
    try:
        with pytest.raises(ConfigError, match="'test_returns_nothing'.*returned NoneType"):
            spec(strength=2.0)
    finally:
        recipe_module._REGISTRY.pop("test_returns_nothing", None)


def test_sweep_refuses_a_repeated_gamma_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--gamma", "0,0.5,0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--gamma" in err and "repeated: 0.0" in err


@pytest.mark.parametrize("command", ["run", "inspect", "sweep"])
def test_unwritable_out_is_refused_with_exit_2_before_loading_the_model(tmp_path, capsys, monkeypatch, command):
    from attnsteer.cli import models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    extra = ["--gamma", "0"] if command == "sweep" else []
    try:
        code = main([command, "--model", "tiny-wan", *extra, "--out", str(blocker / "out")])
    except SystemExit as exc:  # refused by the flag's argparse type, before anything loads
        code = exc.code
    assert code == 2
    assert "--out" in capsys.readouterr().err


def test_image_on_a_pipeline_without_an_image_input_is_refused(tmp_path, capsys, image):
    path = tmp_path / "in.png"
    image.save(path)
    assert main(["run", "--model", "tiny-animatediff", "--steps", "1", "--image", str(path),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--image" in err and "AnimateDiffPipeline" in err


def _plan_and_run(rules, frames=3, rows=2, cols=2):
    from attnsteer.language.selectors import SelectionContext
    from attnsteer.runtime.execute import run_plan
    from attnsteer.runtime.plan import build_plan

    lay = at.TokenLayout(num_frames=frames, tokens_per_frame=rows * cols, grid=(rows, cols))
    ctx = SelectionContext(lay, None)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, lay.seq_len, 8, generator=g) for _ in range(3))
    plan = build_plan(tuple((r, ctx) for r in rules), lay, None, 1, 2)
    return plan, run_plan(plan, q, k, v, lay, None, None, want_mass=False)[0]


def test_a_temperature_that_overflows_float32_logits_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"temperature\(t\) must be >= 1e-30"):
        at.temperature(1e-39)
    with pytest.raises(ConfigError, match=r"logit_scale\(factor\) must have magnitude <= 1e\+30"):
        at.logit_scale(1e39)
    at.temperature(1e-30)  # the smallest accepted: its factor still fits float32 logits


def test_folded_logit_scales_whose_product_overflows_are_refused_naming_the_rules():
    rules = [at.Rule(at.tokens, at.tokens, at.logit_scale(1e20)), at.Rule(at.tokens, at.tokens, at.logit_scale(1e20))]
    with pytest.raises(at.SteeringError, match=r"logit_scale\(1e\+20\).*overflows float32 logits"):
        _plan_and_run(rules)


@pytest.mark.parametrize("fn, message", [
    (lambda s, b, h, qi, ki: s * float("nan"), "returns NaN or \\+inf"),
    (lambda s, b, h, qi, ki: s.log(), "returns NaN or \\+inf"),  # NaN for the negative logits only
    (lambda s, b, h, qi, ki: s.add_(1.0), "edits the logits it is given in place"),
])
def test_a_score_mod_that_returns_nan_or_edits_in_place_is_refused_naming_the_rule(fn, message):
    rule = at.Rule(at.frames[1:], at.frames[0], at.score_mod(fn, "bad"))
    with pytest.raises(at.SteeringError, match=rf"rule .*score_mod\(bad\).*{message}"):
        _plan_and_run([rule])


def test_a_finite_score_mod_still_runs_and_changes_the_output():
    plain = _plan_and_run([])[1]
    rule = at.Rule(at.frames[1:], at.frames[0], at.score_mod(lambda s, b, h, qi, ki: s - 1.0, "minus_one"))
    plan, out = _plan_and_run([rule])
    assert plan.path == "scored" and plan.applied == (rule,) and not torch.equal(out, plain)


def test_a_pair_predicate_that_selects_no_pair_is_not_reported_as_applied():
    empty = at.Rule(at.frames[0], at.frames[2], at.bias(1.0), pairs=at.frame_distance(1))  # 2 frames apart
    kept = at.Rule(at.frames[0], at.frames[1], at.bias(1.0), pairs=at.frame_distance(1))
    plan, out = _plan_and_run([empty])
    assert plan.applied == () and plan.path == "plain"
    assert _plan_and_run([kept, empty])[0].applied == (kept,)


def test_map_bins_that_match_nothing_that_ran_are_reported(run_wan, wan_pipe):
    maps = [at.maps.onto(at.frames.reference)]
    with pytest.warns(at.AttnsteerWarning) as caught:
        with at.inspect(wan_pipe, maps=maps, map_steps=[range(0, 1), range(50, 60)], map_layers=[[0], [9]]) as rec:
            run_wan(num_inference_steps=2)
    messages = [str(w.message) for w in caught if issubclass(w.category, at.AttnsteerWarning)]
    assert any("map_steps range range(50, 60) holds none of the steps that ran ([0, 1])" in m for m in messages)
    assert any("map_layers group [9] holds none of the 2 self-attention layers" in m for m in messages)
    assert rec.maps.step_bin_labels == ["step 0"] and rec.maps.layer_bin_labels == ["layer 0"]  # the rest was kept
    with pytest.raises(at.SteeringError, match="map_steps range range"):
        with at.inspect(wan_pipe, maps=maps, map_steps=[range(50, 60)], strict=True):
            run_wan(num_inference_steps=2)


def test_map_bins_that_all_match_give_no_warning(run_wan, wan_pipe):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", at.AttnsteerWarning)
        with at.inspect(wan_pipe, maps=[at.maps.onto(at.frames.reference)], map_steps=[range(0, 2)],
                        map_layers=[[0], [1]], strict=True):
            run_wan(num_inference_steps=2)


@pytest.fixture(scope="module")
def own_wan():
    """A tiny Wan I2V pipeline of this module's own (the tests enable caches on it)."""
    from attnsteer.testing.tiny import test_image, tiny_wan, wan_call_kwargs

    pipe = tiny_wan()

    def run():
        kwargs = wan_call_kwargs(num_inference_steps=2, output_type="latent")
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return pipe, run


def test_pag_under_first_block_cache_runs_its_perturbed_forward_uncached(own_wan):
    from diffusers import FirstBlockCacheConfig

    from attnsteer.recipes import pag

    pipe, run = own_wan
    vanilla = run()
    with at.steer(pipe, pag(scale=3.0, layers="1")):
        expected = run()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0))  # threshold 0: every block is recomputed
    try:
        np.testing.assert_array_equal(run(), vanilla)
        with at.steer(pipe, pag(scale=3.0, layers="1")):
            got = run()
    finally:
        pipe.transformer.disable_cache()
    assert np.abs(expected - vanilla).max() > 0.1  # PAG moves the prediction ...
    np.testing.assert_array_equal(got, expected)  # ... by as much under the cache


def test_perturbed_guidance_under_a_cache_without_contexts_is_refused_naming_it(own_wan):
    from diffusers.hooks import HookRegistry, ModelHook

    from attnsteer.recipes import stg

    class CountingCache(ModelHook):
        """A stand-in for a cache that keeps state per forward, not per cache context (FasterCache, PAB)."""

        _is_stateful = True

    pipe, run = own_wan
    block = pipe.transformer.blocks[0]
    HookRegistry.check_if_exists_or_initialize(block).register_hook(CountingCache(), "counting_cache")
    try:
        with pytest.raises(at.SteeringError, match="'counting_cache' .*CountingCache.*blocks.0"):
            with at.steer(pipe, stg(mode="R", layers="1")):
                run()
    finally:
        HookRegistry.check_if_exists_or_initialize(block).remove_hook("counting_cache")
