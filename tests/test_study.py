"""``attnsteer study``: the bootstrap interval, resuming without recomputing finished clips, refusing a resume
with other settings, the report's files and the CLI's one-line errors for a bad ``--param``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from attnsteer.cli import main
from attnsteer.errors import ConfigError
from attnsteer.figures.study_report import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    baseline_value,
    bootstrap_interval,
    median_index,
    paired_differences,
)
from attnsteer.sweeps.study import CLIPS, clip_path, run_study
from attnsteer.toy import ToyI2VPipeline
from attnsteer.toy.model import TRANSFORMER_CONFIG, build_modules
from attnsteer.toy.study import ToyStudySubject


def test_bootstrap_interval_equals_a_plain_numpy_percentile_bootstrap():
    values = np.random.default_rng(7).normal(1.5, 0.4, size=16)
    mean, low, high = bootstrap_interval(values)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.array([values[rng.integers(0, 16, size=16)].mean() for _ in range(BOOTSTRAP_RESAMPLES)])
    expected = np.percentile(means, [2.5, 97.5])
    np.testing.assert_allclose([low, high], expected, rtol=1e-12)
    assert mean == pytest.approx(values.mean(), rel=1e-14)
    assert low < mean < high and high - low < values.max() - values.min()


def test_a_constant_metric_has_a_zero_width_interval():
    assert bootstrap_interval([0.1] * 16) == (0.1, 0.1, 0.1)
    assert bootstrap_interval([3.0]) == (3.0, 3.0, 3.0)


def test_paired_differences_bootstrap_the_per_seed_differences_to_the_baseline():
    """Seeds shared by all values: a shift of 0.05 that the spread between seeds hides in the means' intervals
    shows in the paired interval, which is a plain percentile bootstrap of the per-seed differences."""
    rng = np.random.default_rng(3)
    per_seed = rng.normal(1.0, 0.3, size=16)  # what a seed's clip contributes at every value
    noise = rng.normal(0, 0.01, size=16)
    clips = {0.0: {i: {"speed": float(per_seed[i])} for i in range(16)},
             1.0: {i: {"speed": float(per_seed[i] + 0.05 + noise[i])} for i in range(16)}}
    assert baseline_value([-1.0, 0.0, 1.0]) == 0.0 and baseline_value([2, 3]) == 2 and baseline_value([True]) is True
    (row,) = paired_differences(clips, 0.0, ["speed"])
    stats = row["metrics"]["speed"]
    diffs = 0.05 + noise
    draw = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.array([diffs[draw.integers(0, 16, size=16)].mean() for _ in range(BOOTSTRAP_RESAMPLES)])
    np.testing.assert_allclose([stats["low"], stats["high"]], np.percentile(means, [2.5, 97.5]), rtol=1e-10)
    assert row["value"] == 1.0 and row["clips"] == 16 and stats["low"] > 0
    _, low_1, _ = bootstrap_interval([c["speed"] for c in clips[1.0].values()])
    _, _, high_0 = bootstrap_interval([c["speed"] for c in clips[0.0].values()])
    assert low_1 < high_0  # the means' own intervals overlap


def test_the_median_clip_is_the_lower_median():
    assert median_index([5.0, 1.0, 3.0]) == 2
    assert median_index([4.0, 1.0, 3.0, 2.0]) == 3  # sorted 1, 2, 3, 4: the lower median is 2, at position 3


@pytest.fixture
def tiny_toy():
    """A toy pipeline with one small random layer: fast, and independent of the shipped weights."""
    config = {**TRANSFORMER_CONFIG, "num_layers": 1, "num_attention_heads": 2, "ffn_dim": 32}
    transformer, prompts = build_modules(seed=0, config=config)
    pipe = ToyI2VPipeline(transformer.eval(), prompts.eval(), FlowMatchEulerDiscreteScheduler(shift=2.0),
                          clean_reference=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def calls(monkeypatch):
    """The batch size of every toy pipeline call."""
    made: list[int] = []
    original = ToyI2VPipeline.__call__

    def counting(self, *args, **kwargs):
        made.append(len(kwargs["prompt"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ToyI2VPipeline, "__call__", counting)
    return made


class Interrupted(Exception):
    pass


def _study(pipe, out, steps=2, **kwargs):
    options = {"fixed": {"stop": 0.5}, "progress": False, **kwargs}
    return run_study(pipe, ToyStudySubject(pipe, steps=steps), "dymos", "gamma", (0.0, 1.0), 3, out, **options)


def _same(a, b):
    for value in a.values:
        for x, y in zip(a.clips[value], b.clips[value], strict=True):
            assert (x.index, x.metrics) == (y.index, y.metrics)
            np.testing.assert_array_equal(x.video, y.video)


def test_an_interrupted_study_resumes_without_recomputing_finished_clips(tiny_toy, calls, tmp_path, monkeypatch):
    whole = _study(tiny_toy, tmp_path / "whole")
    assert calls == [1] * 6 and whole.computed == 6
    calls.clear()

    original = ToyStudySubject.generate

    def interrupt_third_call(self, pipe, indices):
        if len(calls) == 2:
            raise Interrupted
        return original(self, pipe, indices)

    monkeypatch.setattr(ToyStudySubject, "generate", interrupt_third_call)
    with pytest.raises(Interrupted):
        _study(tiny_toy, tmp_path / "resumed")
    monkeypatch.setattr(ToyStudySubject, "generate", original)
    kept = sorted(p.relative_to(tmp_path / "resumed") for p in (tmp_path / "resumed" / CLIPS).rglob("*"))
    assert [str(p) for p in kept if p.suffix] == ["clips/gamma_0/seed_0000.npz", "clips/gamma_0/seed_0001.npz"]
    calls.clear()
    resumed = _study(tiny_toy, tmp_path / "resumed")
    assert calls == [1] * 4 and resumed.computed == 4  # the two finished clips are read, not generated
    _same(resumed, whole)

    clip_path(tmp_path / "resumed", "gamma", 1.0, 1).unlink()
    calls.clear()
    again = _study(tiny_toy, tmp_path / "resumed", batch=2)
    assert calls == [1] and again.computed == 1
    _same(again, whole)


def test_a_resume_with_other_settings_is_refused(tiny_toy, tmp_path):
    _study(tiny_toy, tmp_path)
    with pytest.raises(ConfigError, match=r"other settings \(model\.steps: 2 -> 3\)"):
        _study(tiny_toy, tmp_path, steps=3)
    with pytest.raises(ConfigError, match=r"fixed\.stop: 0\.5 -> 0\.25"):
        _study(tiny_toy, tmp_path, fixed={"stop": 0.25})
    # a clip file from another study dropped into the folder is refused, naming it
    _study(tiny_toy, tmp_path / "other", steps=1)
    foreign = clip_path(tmp_path / "other", "gamma", 0.0, 0)
    clip_path(tmp_path, "gamma", 0.0, 0).write_bytes(foreign.read_bytes())
    with pytest.raises(ConfigError, match="seed_0000.npz was made with other settings"):
        _study(tiny_toy, tmp_path)
    restarted = _study(tiny_toy, tmp_path, resume=False)  # --restart: the folder's clips are recomputed
    assert restarted.computed == 6


def test_cli_study_writes_every_clip_and_the_report(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "--model", "toy", "--recipe", "dymos", "--param", "gamma=0,1", "--param", "stop=0.5",
            "--seeds", "2", "--steps", "2", "--batch", "2", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "study.json").read_text())
    for key in ("command", "versions", "model", "recipe", "param", "fixed", "values", "seeds", "bootstrap",
                "columns", "clips", "summary"):
        assert key in report, key
    assert report["command"].startswith("attnsteer study --model toy --recipe dymos --param gamma=0,1")
    assert {"torch", "diffusers", "attnsteer"} <= set(report["versions"])
    assert len(report["model"]["weights_sha256"]) == 64 and report["model"]["steps"] == 2
    assert (report["param"], report["values"], report["fixed"]) == ("gamma", [0.0, 1.0], {"stop": 0.5})
    assert [(c["value"], c["seed_index"]) for c in report["clips"]] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    assert all(set(c["metrics"]) == set(report["columns"]) for c in report["clips"])
    for row in report["summary"]:
        speeds = [c["metrics"]["speed"] for c in report["clips"] if c["value"] == row["value"]]
        stats = row["metrics"]["speed"]
        assert stats["mean"] == pytest.approx(np.mean(speeds), rel=1e-12)
        assert stats["low"] <= stats["mean"] <= stats["high"]
    page = (out / "study.md").read_text()
    assert "| gamma | clips | flow |" in page and f"{BOOTSTRAP_RESAMPLES} resamples" in page
    assert "What to look for" in page and "study_metrics.png" in page and "study_median_clips.png" in page
    for name in ("study_metrics.png", "study_median_clips.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "4 clips generated, 0 resumed" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 clips generated, 4 resumed" in capsys.readouterr().out


def test_cli_study_on_a_pipeline_uses_the_weight_free_metrics(tmp_path):
    out = tmp_path / "study"
    assert main(["study", "--model", "tiny-wan", "--recipe", "dymos", "--param", "gamma=0,1", "--seeds", "1",
                 "--steps", "2", "--out", str(out)]) == 0
    report = json.loads((out / "study.json").read_text())
    assert report["metrics"] == "weight-free"
    assert {"flow", "frame_diff", "ssim_later", "moves"} <= set(report["clips"][0]["metrics"])


@pytest.mark.parametrize("param, named", [
    ("gamma", "--param expects NAME=V1,V2,..."),
    ("gamma=1,,2", "--param gamma=1,,2: an empty value"),
    ("gamma=a,1", "--param gamma=a,1: dymos(gamma=...) must be a real number"),
    ("nope=1,2", "--param nope=1,2: recipe 'dymos' has no parameter 'nope'"),
    ("gamma=1,1", "--param gamma=1,1: a value is repeated"),
])
def test_bad_param_syntax_fails_with_one_line_naming_the_field(param, named, tmp_path, capsys):
    assert main(["study", "--recipe", "dymos", "--param", param, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnsteer: error: ") and named in err, err
    assert not (tmp_path / "study_settings.json").exists()  # refused before anything ran
