"""Figures: real PNGs of the promised size, not blank, marked reference frames, checked inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import attnsteer as at
from attnsteer import viz


def frame_map(f: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(f, f, generator=torch.Generator().manual_seed(seed)), -1)


def assert_png(path, fig):
    width, height = (fig.get_size_inches() * viz.DPI).round().astype(int)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (width, height)
        assert np.asarray(im.convert("L"), dtype=float).var() > 0


def test_frame_map_figure(tmp_path):
    fig = viz.plot_frame_map(frame_map(5), tmp_path / "new" / "map.png", title="cond")
    assert_png(tmp_path / "new" / "map.png", fig)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "key frame" and ax.get_ylabel() == "query frame"
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["0 (ref)", "1"]
    assert len(ax.texts) == 25 and fig.axes[1].get_ylabel() == "attention mass"
    many = viz.plot_frame_map(np.eye(20), reference_frames=(0, -1))
    assert len(many.axes[0].texts) == 0  # no cell values above 12 frames
    assert "19 (ref)" in [t.get_text() for t in many.axes[0].get_yticklabels()]
    assert len(viz.plot_frame_map(frame_map(12)).axes[0].texts) == 144


def test_diff_is_centred_at_zero(tmp_path):
    a, b = frame_map(4, 1), frame_map(4, 2)
    fig = viz.plot_frame_map_diff(a, b, tmp_path / "diff.png")
    assert_png(tmp_path / "diff.png", fig)
    norm = fig.axes[0].images[0].norm
    assert norm.vmin == -norm.vmax == pytest.approx(-float((a - b).abs().max()))
    assert fig.axes[1].get_ylabel() == "Δ attention mass"
    assert viz.plot_frame_map_diff(a - b).axes[0].images[0].norm.vmax == pytest.approx(norm.vmax)


def test_reference_mass_curves(tmp_path):
    curves = {"γ=0": [0.5, 0.4, 0.45], "γ=1": ([0, 2, 4], torch.tensor([0.3, 0.2, 0.4])), "pair": (0.2, 0.3)}
    fig = viz.plot_reference_mass(curves, tmp_path / "curves.png", title="sweep")
    assert_png(tmp_path / "curves.png", fig)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and list(lines[1].get_xdata()) == [0, 2, 4] and lines[0].get_marker() == "o"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == list(curves)


def test_grid_shares_one_colour_scale(tmp_path):
    maps = {f"step {i}": frame_map(3, i) * (i + 1) / 3 for i in range(3)}
    fig = viz.plot_frame_map_grid(maps, tmp_path / "grid.png", ncols=2)
    assert_png(tmp_path / "grid.png", fig)
    limits = {ax.images[0].get_clim() for ax in fig.axes if ax.images}
    assert len(limits) == 1
    assert sum(ax.get_ylabel() == "attention mass" for ax in fig.axes) == 1


def test_contact_sheet(tmp_path):
    video = np.random.default_rng(0).random((9, 16, 24, 3))
    fig = viz.contact_sheet({"vanilla": video, "steered": torch.from_numpy(video[::-1].copy())},
                            tmp_path / "sheet.png", max_frames=4)
    assert_png(tmp_path / "sheet.png", fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["t=0", "t=3", "t=5", "t=8"]  # evenly sampled, shown once above the first row
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["vanilla", "steered"]


def test_metrics_panels(tmp_path):
    fig = viz.plot_metrics([-1, 0, 1], {"flow": [0.1, 0.5, 0.9], "psnr_first": [30, float("inf"), 25]},
                           tmp_path / "metrics.png", title="toy")
    assert_png(tmp_path / "metrics.png", fig)
    assert [ax.get_title() for ax in fig.axes] == ["flow", "psnr_first"]
    assert len(fig.axes[1].get_lines()[0].get_xdata()) == 2  # the inf point is left out


def test_bad_inputs_name_the_argument():
    with pytest.raises(at.ConfigError, match=r"m must be a square \[F, F\] frame map"):
        viz.plot_frame_map(np.zeros((2, 3)))
    with pytest.raises(at.ConfigError, match="a and b must have the same shape"):
        viz.plot_frame_map_diff(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(at.ConfigError, match="reference_frames must be frame indices"):
        viz.plot_frame_map(np.eye(3), reference_frames=(3,))
    with pytest.raises(at.ConfigError, match="curves must hold at least one"):
        viz.plot_reference_mass({})
    with pytest.raises(at.ConfigError, match=r"curves\['a'\] has 2 x values and 3 y values"):
        viz.plot_reference_mass({"a": ([0, 1], [1, 2, 3])})
    with pytest.raises(at.ConfigError, match=r"maps\['s'\] must have 2 dimension"):
        viz.plot_frame_map_grid({"s": np.zeros(3)})
    with pytest.raises(at.ConfigError, match=r"videos\['x'\] must be frames"):
        viz.contact_sheet({"x": np.zeros((3, 3))})
    with pytest.raises(at.ConfigError, match=r"series\['flow'\] has 2 values for 3 xs"):
        viz.plot_metrics([0, 1, 2], {"flow": [1, 2]})
