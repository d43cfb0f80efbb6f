"""Hostile and mistaken input (issue 22 §4): every bad value is refused early with an AttnsteerError naming
the field, never a raw exception, an allocation the input's size does not justify, or a silent fallback."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.language.layout import TokenLayout


# --- §4.1 saved recordings -----------------------------------------------------------------------------------------
def maps_file(path, tokens_per_frame=4, query_sets=None, keys=0):
    """A map recording written by hand: one map, 2 frames of ``tokens_per_frame`` tokens, ``keys`` saved maps."""
    layout = TokenLayout(num_frames=2, tokens_per_frame=tokens_per_frame)
    meta = {"format": "attnsteer-maps-1", "maps": ["m"], "axes": {"m": "key"},
            "query_sets": {"m": [0, 1]} if query_sets is None else query_sets, "layout": layout.describe(),
            "layers": {"blocks.0": 0}, "step_bins": {"0": [0]}, "layer_bins": {"0": ["blocks.0"]},
            "keys": [["m", "0", "0", "cond"]] * keys, "counts": [1] * keys}
    sums = np.ones((keys, layout.seq_len if keys else 0))
    np.savez_compressed(path, sums=sums, metadata=np.array(json.dumps(meta)))
    return path


def test_a_small_maps_file_cannot_make_the_loader_allocate_from_its_declared_layout(tmp_path):
    for tokens in (4_000_000_000, 400_000_000):
        path = maps_file(tmp_path / f"bomb{tokens}.npz", tokens_per_frame=tokens)
        assert path.stat().st_size < 2048
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(at.RecordingError, match="refusing to allocate"):
            at.maps.MapRecording.load(path)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB: nothing of 400 MB


@pytest.mark.parametrize("tokens", [[8], [-1], [0.5], [True]])
def test_a_query_set_index_outside_the_layout_is_a_recording_error(tmp_path, tokens):
    path = maps_file(tmp_path / "bad.npz", query_sets={"m": tokens}, keys=1)
    with pytest.raises(at.RecordingError, match=r"query set of map 'm' must hold token indices in \[0, 8\)"):
        at.maps.MapRecording.load(path)


def test_a_valid_hand_written_maps_file_loads_its_query_set(tmp_path):
    rec = at.maps.MapRecording.load(maps_file(tmp_path / "ok.npz", keys=1))
    assert rec.query_sets["m"].tolist() == [True, True] + [False] * 6
    assert torch.equal(rec.heatmap("m").values, torch.ones(8))


def test_record_query_groups_outside_the_layout_fail_at_load(tmp_path):
    layout = TokenLayout(num_frames=2, tokens_per_frame=4)
    meta = {"format": None, "heads": False,
            "queries": "groups([99])", "query_groups": [99], "layout": layout.describe(), "layers": {},
            "timesteps": {}, "keys": [], "counts": []}
    from attnsteer.inspection.record import FORMAT_VERSION

    meta["format"] = FORMAT_VERSION
    path = tmp_path / "rec.npz"
    np.savez_compressed(path, sums=np.zeros((0, 1, 1, 1)), metadata=np.array(json.dumps(meta)))
    with pytest.raises(at.RecordingError, match=r"query_groups.*\[99\] out of range for a layout of 2 groups"):
        at.Record.load(path)


# --- §4.4 raw errors become ConfigError naming the field; every real number type is accepted -----------------------
def rule(**fields):
    return at.Rule(query=at.tokens, key=at.tokens, transform=at.bias(1.0), **fields)


@pytest.mark.parametrize("make, message", [
    (lambda: at.fill(1e39), r"fill\(value\) must be -inf or a number of magnitude <= 3.40282e\+38"),
    (lambda: rule(layers=2.5), r"Rule.layers must be None, one or several layer indices"),
    (lambda: rule(heads=1.5), r"Rule.heads must be None, one or several head indices"),
    (lambda: at.frame_window(2, adjusted=1), r"frame_window\(adjusted=...\) must be True or False, got 1"),
    (lambda: at.mask([["a"]]), r"mask\(pixels\) must be a boolean \[H, W\] or \[F, H, W\] array"),
    (lambda: at.maps.MapRecording([at.maps.received()], steps=np.array([0, 1])), r"inspect\(map_steps=...\) must be"),
    (lambda: at.maps.MapRecording([at.maps.received()], layers=np.array([0, 1])), r"inspect\(map_layers=...\) must be"),
    (lambda: at.recipes.direct_a_video("cat", strength=1e40), r"direct_a_video\(strength=...\) must be a number of "
                                                              r"magnitude <= 10000"),
])
def test_bad_values_raise_a_config_error_naming_the_field(make, message):
    with pytest.raises(at.ConfigError, match=message):
        make()


def test_heatmap_layers_that_are_not_indices_or_names_raise_a_config_error():
    from attnsteer.inspection.record import layer_names

    with pytest.raises(at.ConfigError, match=r"layers must be layer indices or names/regexes, one or several, got 1.5"):
        layer_names(1.5, {"blocks.0": 0})
    assert layer_names(np.int64(0), {"blocks.0": 0, "blocks.1": 1}) == {"blocks.0"}


@pytest.mark.parametrize("returned, message", [
    (lambda s: s.double(), r"must return scores of the dtype it was given \(torch.float32\), got torch.float64"),
    (lambda s: torch.zeros(3), r"must return a tensor broadcastable to the scores' shape \(2, 2\), got \(3,\)"),
])
def test_a_score_mod_returning_the_wrong_dtype_or_shape_raises_a_config_error(returned, message):
    mod = at.score_mod(lambda s, b, h, q, k: returned(s), name="bad")
    with pytest.raises(at.ConfigError, match=r"score_mod\(bad\) " + message):
        mod.score(torch.zeros(2, 2), 0, 0, torch.arange(2)[:, None], torch.arange(2)[None])


def test_grouped_attention_with_mixed_dtypes_raises_a_kernel_error():
    q, groups = torch.randn(1, 1, 4, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(at.KernelError, match="q, k, v must share one floating dtype, got torch.float32, torch.float64"):
        at.kernels.grouped_attention(q, q.double(), q, groups, groups)


@pytest.mark.parametrize("np_int", [np.int64, np.int32, np.uint8])
def test_numpy_integers_are_accepted_wherever_an_index_is(np_int):
    assert rule(layers=np_int(1)).layers == (1,) and rule(heads=[np_int(1), 0]).heads == (0, 1)
    assert repr(at.frames[np_int(1)]) == "frames[1]" and repr(at.frames[np_int(1):np_int(3)]) == "frames[1:3]"
    assert at.frame_window(np_int(2)) == at.frame_window(2)
    assert at.frame_distance(np_int(1)) == at.frame_distance(1)
    assert at.box(0.1, 0.1, 0.5, 0.5, frames=np_int(1)) == at.box(0.1, 0.1, 0.5, 0.5, frames=1)
    assert at.recipes.dymos(until_step=np_int(3)).rules == at.recipes.dymos(until_step=3).rules
    assert at.maps.MapRecording([at.maps.received()], steps=np_int(3)).step_bins.spec == 3


@pytest.mark.parametrize("np_float", [np.float64, np.float32, np.float16])
def test_numpy_floats_are_accepted_wherever_a_real_number_is(np_float):
    assert at.box(np_float(0.25), 0.25, 0.75, np_float(0.75)) == at.box(0.25, 0.25, 0.75, 0.75)
    assert at.point(np_float(0.5), np_float(0.25)) == at.point(0.5, 0.25)
    assert at.recipes.dymos(gamma=np_float(0.5), stop=np_float(0.5)).rules == at.recipes.dymos(gamma=0.5, stop=0.5).rules
    assert at.frame_window(2, adjusted=np.bool_(True)) == at.frame_window(2, adjusted=True)


# --- §4.5 messages name what the user called --------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: at.temperature(5e-324), r"^temperature\(t\) must be >= 1e-30"),
    (lambda: at.temperature(0), r"^temperature\(t\) must be >= 1e-30"),
    (lambda: at.recipes.dymos(until_step=0), r"^dymos\(until_step=...\) must be an int >= 1, got 0"),
])
def test_errors_name_the_function_the_user_called(make, message):
    with pytest.raises(at.ConfigError, match=message):
        make()


def test_direct_a_video_amplify_zero_is_accepted_and_amplifies_no_step():
    recipe = at.recipes.direct_a_video("cat", amplify=0)
    assert dict(recipe.params)["amplify"] == 0.0
    assert [r.transform for r in recipe.rules] == [at.block(), at.block()]
    assert len(at.recipes.direct_a_video("cat").rules) == 3


# --- §4.2 per-token query_bias stays O(N) --------------------------------------------------------------------------
def plan_for(rule, lay, batch=1, heads=2, want_mass=False):
    from attnsteer.language.selectors import SelectionContext
    from attnsteer.runtime.plan import build_plan

    return build_plan(((rule, SelectionContext(lay, None)),), lay, None, batch, heads, want_mass=want_mass)


def test_per_token_query_bias_never_builds_an_n_by_n_bias_table():
    lay = at.TokenLayout(num_frames=16, tokens_per_frame=1024, video_start=0)
    values = torch.arange(lay.seq_len, dtype=torch.float32) / lay.seq_len
    plan = plan_for(at.Rule(at.frames[1:], at.frames[0], at.query_bias(values)), lay)
    assert plan.path == "scored" and plan.bias is None  # a [2, 16384, 16384] table would take 2 GiB
    few = plan_for(at.Rule(at.frames[1:], at.frames[0], at.query_bias((values > 0.5).float())), lay)
    assert few.path == "grouped" and few.bias.numel() <= 16 * lay.seq_len


def test_per_token_query_bias_on_the_score_path_equals_the_dense_float64_softmax():
    from attnsteer.runtime.execute import run_plan

    lay = at.TokenLayout(num_frames=3, tokens_per_frame=100, video_start=4, segments=[at.Segment("text", 0, 4)])
    values = torch.linspace(-2, 2, lay.seq_len, dtype=torch.float64)
    plan = plan_for(at.Rule(at.video, at.text, at.query_bias(values)), lay, heads=1, want_mass=True)
    assert plan.path == "scored"  # 304 cells: 304^2 pairs exceed the table's budget
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, lay.seq_len, 8, generator=g) for _ in range(3))
    out, mass = run_plan(plan, q, k, v, lay, None, None, want_mass=True)
    text = torch.arange(lay.seq_len) < 4
    logits = (q.double() @ k.double().transpose(-1, -2)) * 8**-0.5
    logits = logits + (~text)[:, None].double() * text[None, :].double() * values[:, None]
    expected = logits.softmax(-1) @ v.double()
    tolerance = 8 * torch.finfo(torch.float32).eps * float(v.abs().max())
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=0)
    assert mass.shape == (1, 1, lay.num_groups, lay.num_groups)


# --- §4.3 a broken third-party plugin is reported once, by name; the rest keeps working -------------------------
BROKEN_MODULES = {
    "broken_import.py": "import a_module_that_does_not_exist\n",
    "broken_listy.py": ("import attnsteer as at\nfrom attnsteer.language.recipe import recipe\n\n"
                        "@recipe\ndef listy(x: list = ()) -> at.Recipe:\n    '''A list parameter.'''\n"),
    "broken_dymos.py": ("import attnsteer as at\nfrom attnsteer.language.recipe import recipe\n\n"
                        "@recipe\ndef dymos(gamma: float = 1.0) -> at.Recipe:\n    '''Another dymos.'''\n"),
    "broken_adapter.py": ("import attnsteer as at\n\nclass NoLayout(at.Adapter):\n    family = 'nolayout'\n"
                          "    model_classes = ('WanTransformer3DModel',)\n    self_attention = 'blocks.*attn1'\n"),
}
BROKEN_ENTRY_POINTS = {
    "attnsteer.recipes": {"importer": "broken_import", "listy": "broken_listy", "dymos2": "broken_dymos"},
    "attnsteer": {"nolayout": "broken_adapter"},
}


@pytest.fixture
def broken_plugins(tmp_path):
    """A distribution of four broken plugins on sys.path (as an installer would leave it); all gone after."""
    import sys

    from attnsteer.contract import registry as manager
    from attnsteer.language import recipe as recipe_registry

    for name, text in BROKEN_MODULES.items():
        (tmp_path / name).write_text(text)
    info = tmp_path / "broken_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("\n".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
        for group, entries in BROKEN_ENTRY_POINTS.items()))
    recipe_registry.available_recipes()  # the built-in and installed recipes, registered before the fixture's
    saved = dict(recipe_registry._REGISTRY)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(tmp_path))
        manager.plugin_manager.cache_clear()
        recipe_registry._load_entry_points.cache_clear()
        yield
    for name in BROKEN_MODULES:
        sys.modules.pop(name.removesuffix(".py"), None)
    recipe_registry._REGISTRY.clear()
    recipe_registry._REGISTRY.update(saved)
    manager.plugin_manager.cache_clear()
    recipe_registry._load_entry_points.cache_clear()


def test_broken_plugins_are_reported_once_by_name_and_the_built_ins_keep_working(broken_plugins, wan_pipe, capsys):
    from attnsteer.cli import main
    from attnsteer.contract import registry as manager
    from attnsteer.language import recipe as recipe_registry

    with pytest.warns(at.AttnsteerWarning) as caught:
        assert main(["recipes"]) == 0
        assert main(["recipes"]) == 0
        adapter = manager.find_adapter(wan_pipe.transformer)
        manager.find_adapter(wan_pipe.transformer)
    messages = [str(w.message) for w in caught if issubclass(w.category, at.AttnsteerWarning)]
    for name in ("importer = broken_import", "listy = broken_listy", "dymos2 = broken_dymos",
                 "nolayout = broken_adapter"):
        assert sum(name in m for m in messages) == 1, (name, messages)
    assert "ModuleNotFoundError" in next(m for m in messages if "importer" in m)
    assert "defines no layout" in next(m for m in messages if "nolayout" in m)
    assert type(adapter).__name__ != "NoLayout" and adapter.family == "wan"
    assert recipe_registry.get_recipe("dymos").source == "built-in"
    assert "dymos(gamma: float = 0.6" in capsys.readouterr().out


def test_a_broken_plugin_does_not_stop_steering_a_built_in_family(broken_plugins, wan_pipe):
    from attnsteer.testing.tiny import test_image, wan_call_kwargs

    def run():
        return wan_pipe(image=test_image(), generator=torch.Generator().manual_seed(0),
                        **wan_call_kwargs(num_inference_steps=1, output_type="latent")).frames[0]

    plain = run()
    with pytest.warns(at.AttnsteerWarning, match="nolayout = broken_adapter is left out"):
        with at.steer(wan_pipe, at.recipes.dymos(gamma=0.0)) as session:
            steered = run()
    assert torch.equal(steered, plain) and session.summary()


# --- §4.6 the command line: exit 2 and one line naming the flag --------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--recipe", "dymso"], "--recipe 'dymso' is not a recipe; did you mean 'dymos'? `attnsteer recipes` lists them"),
    (["--seed", str(2**70)], "argument --seed: expected a seed in 0..9223372036854775807"),
    (["--frames", "100000"], "argument --frames: expected a number of video frames in 1..1024, got 100000"),
    (["--device", "cuda:abc"], "--device must be one of cpu, cuda, mps (optionally 'cuda:N'), got 'cuda:abc'"),
    (["--model", "os.path:join"], "--model 'os.path:join': join() failed: TypeError"),
    (["--model", "tiny-wann"], "did you mean 'tiny-wan'? `attnsteer models` lists the built-in models"),
])
def test_bad_flags_exit_2_naming_the_flag(tmp_path, capsys, argv, message):
    code = exit_code(["run", "--model", "tiny-wan", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    if not message.startswith("argument"):  # not argparse's usage + error: one line
        assert err.count("\n") == 1 and len(err) < 300


def exit_code(argv: list[str]) -> int:
    """The exit status of ``attnsteer ARGV`` (argparse's refusals exit through SystemExit)."""
    from attnsteer.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_device_cuda_without_cuda_exits_2(tmp_path, capsys):
    from attnsteer.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", "--model", "tiny-wan", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err


def test_out_under_a_file_exits_2_naming_out(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert exit_code(["run", "--model", "tiny-wan", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "argument --out:" in (err := capsys.readouterr().err) and "which is a file, not a folder" in err


def test_an_unknown_recipe_attribute_raises_attribute_error_with_a_suggestion():
    with pytest.raises(AttributeError, match=r"no recipe 'enhancea_video'; did you mean 'enhance_a_video'\?"):
        at.recipes.enhancea_video  # noqa: B018


def test_sweep_batch_on_a_pipeline_that_cannot_batch_exits_2_naming_batch(tmp_path, capsys):
    argv = ["sweep", "--model", "tiny-i2vgen-xl", "--gamma", "0,1", "--batch", "2", "--steps", "1", "--out", str(tmp_path)]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "I2VGenXLPipeline could not run 2 items batched in one call" in err and "without --batch" in err
    assert err.count("\n") == 1


# --- §6 sessions: a reused session reports its own run; maps refusals come before the run --------------------------
def wan_latents(pipe):
    from attnsteer.testing.tiny import test_image, wan_call_kwargs

    return pipe(image=test_image(), generator=torch.Generator().manual_seed(0),
                **wan_call_kwargs(num_inference_steps=2, output_type="latent")).frames[0]


def test_a_reused_session_object_reports_only_its_latest_run(wan_pipe):
    session = at.steer(wan_pipe, at.recipes.dymos(gamma=0.5, until_step=1))
    with session as steering:
        wan_latents(wan_pipe)
    first = steering.summary()
    with session as again:
        wan_latents(wan_pipe)
    assert again is steering and again.summary() == first and first["attention_calls_steered"] > 0


def test_map_max_mb_is_refused_at_the_first_call_before_any_map_is_computed(wan_pipe):
    calls = []
    handle = wan_pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(at.SteeringError, match=r"past map_max_mb=0.001 MB .*refused before the run"):
            with at.inspect(wan_pipe, maps=[at.maps.received()], map_steps="each", map_layers="each",
                            map_max_mb=0.001) as rec:
                wan_latents(wan_pipe)
    finally:
        handle.remove()
    assert calls == [] and rec.maps._sums == {}  # no forward finished, nothing recorded


@pytest.mark.parametrize("recipe", [lambda: at.recipes.pag(2.0, layers="1"), lambda: at.recipes.stg("A", 2.0, layers="0"),
                                    lambda: at.recipes.ultravico(alpha=0.5, train_frames=1)])
def test_spatial_maps_with_a_score_path_rule_are_refused_before_the_run(wan_pipe, recipe):
    from dense_reference import hook_state

    before = hook_state(wan_pipe.transformer)
    with at.inspect(wan_pipe, maps=[at.maps.received()]):
        with pytest.raises(at.SteeringError, match=r"score path.*refused before the run"):
            with at.steer(wan_pipe, recipe()):
                pytest.fail("the session must refuse before its block runs")
        with at.steer(wan_pipe, at.recipes.dymos(gamma=0.5)):  # a grouped rule still records maps
            pass
    assert hook_state(wan_pipe.transformer) == before
