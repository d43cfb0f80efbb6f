"""``attnsteer demo --quick`` writes every artefact the README promises, from the shipped toy model,
and the toy experiment's identity metric tells a kept sprite from a faded or smeared one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnsteer.cli import main
from attnsteer.toy import ToyI2VPipeline, sample_clip
from attnsteer.toy.evaluate import COLUMNS, GAMMAS, evaluation_clips, generate, identity, record_t2v
from attnsteer.figures.videoio import load_video


def test_quick_demo_writes_videos_figures_and_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    figures = ("contact_sheet.png", "frame_map_i2v.png", "i2v_minus_t2v.png", "dymos_minus_vanilla.png",
               "reference_mass_by_step.png", "metrics_vs_gamma.png")
    for name in figures:
        assert (tmp_path / name).stat().st_size > 1000, name
    for gamma in GAMMAS:
        video = load_video(tmp_path / f"gamma_{gamma:g}.mp4")
        assert video.shape[0] == 9, gamma
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = summary["rows"]
    assert [row["gamma"] for row in rows] == list(GAMMAS)
    assert all(len(row["clip_rows"]) == len(summary["clips"]) for row in rows)
    masses = [row["ref_mass"] for row in rows]
    assert masses == sorted(masses, reverse=True), masses  # DyMoS takes mass off the reference frame
    out = capsys.readouterr().out
    for column in COLUMNS:  # every column of the printed table is explained under it
        assert f"\n  {column} " in out, column
    assert "docs/toy.md" in out.splitlines()[-1]  # the last line points to what the numbers do and do not show
    report = json.loads((tmp_path / "study.json").read_text())  # the demo is a study with fixed settings
    assert (report["recipe"], report["param"], report["fixed"]) == ("dymos", "gamma", {"stop": 0.3})
    for row in rows:
        assert [c["metrics"] for c in report["clips"] if c["value"] == row["gamma"]] == row["clip_rows"]
    assert (tmp_path / "study.md").is_file()


def test_identity_tells_a_kept_sprite_from_a_faded_or_smeared_one():
    clip = sample_clip(3, "right fast")
    assert identity(clip.video, clip) == {"size": 1.0, "size_worst": 1.0, "colour_err": pytest.approx(0.0, abs=0.02),
                                          "kept": 1.0}
    background = np.repeat(clip.video[:1], len(clip.video), axis=0)
    faded = background.copy()
    sprite = np.linalg.norm(clip.video[0] - clip.colour, axis=-1) < 0.35
    faded[:, sprite] = clip.video[0][~sprite].mean(axis=0)  # the sprite painted over with the background's mean
    gone = identity(faded, clip)
    assert gone["size"] == 0.0 and gone["colour_err"] > 0.3 and gone["kept"] == 0.0
    smeared = clip.video.copy()
    smeared[1:, :, :] = np.where(sprite[None, :, :, None] | np.roll(sprite, 6, axis=1)[None, :, :, None],
                                 clip.colour, clip.video[1:])
    grown = identity(smeared, clip)
    assert grown["size"] > 1.5 and grown["colour_err"] < 0.05 and grown["kept"] == 0.0


@pytest.fixture(scope="module")
def pipe():
    return ToyI2VPipeline.from_shipped()


def test_a_batch_equals_its_clips_generated_one_by_one(pipe):
    clips = evaluation_clips(3)
    batch = generate(pipe, clips, steps=3)
    for i, clip in enumerate(clips):
        alone = pipe(image=clip.video[0], prompt=clip.prompt, num_inference_steps=3,
                     generator=torch.Generator().manual_seed(i)).frames[0]
        np.testing.assert_allclose(batch[i], alone, atol=1e-4)


def test_text_to_video_reference_stops_after_the_first_steps(pipe):
    rec = record_t2v(pipe, evaluation_clips(2), steps=20)
    assert rec.steps == [0, 1]
