"""``attnsteer demo --quick`` writes every artefact the README promises, from the shipped toy model."""

from __future__ import annotations

import json

from attnsteer.cli import main
from attnsteer.demo import GAMMAS
from attnsteer.videoio import load_video


def test_quick_demo_writes_videos_figures_and_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    figures = ("contact_sheet.png", "frame_map_i2v.png", "i2v_minus_t2v.png", "dymos_minus_vanilla.png",
               "reference_mass_by_step.png", "metrics_vs_gamma.png")
    for name in figures:
        assert (tmp_path / name).stat().st_size > 1000, name
    for gamma in GAMMAS:
        video = load_video(tmp_path / f"gamma_{gamma:g}.mp4")
        assert video.shape[0] == 9, gamma
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [row["gamma"] for row in rows] == list(GAMMAS)
    masses = [row["ref_mass"] for row in rows]
    assert masses == sorted(masses, reverse=True), masses  # DyMoS takes mass off the reference frame
    assert "ref_mass" in capsys.readouterr().out
