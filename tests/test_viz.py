"""Figures: real PNGs of the promised size, not blank, marked reference frames, checked inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import attnsteer as at
from attnsteer.figures import viz


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
                            tmp_path / "sheet.png", max_frames=4, title="clip 1, prompt 'right fast'")
    assert_png(tmp_path / "sheet.png", fig)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["t=0", "t=3", "t=5", "t=8"]  # first and last kept
    assert [t.get_text() for t in ax.get_yticklabels()] == ["vanilla", "steered"]
    assert ax.get_title() == "clip 1, prompt 'right fast'"
    mosaic = ax.images[0].get_array()
    frames = at.videoio.as_frames(video)
    assert np.array_equal(mosaic[18:34, 26 * 2 : 26 * 2 + 24], frames[::-1][5])  # row 1, third pick: t=5
    every = viz.contact_sheet({"a": video})
    assert len(every.axes[0].get_xticks()) == 9  # nine frames: every one shown, none skipped


def test_count_axes_have_integer_ticks():
    fig = viz.plot_reference_mass({"vanilla": ([0, 1, 2, 3], [0.5, 0.4, 0.45, 0.4])}, shade=(0, 1))
    ticks = fig.axes[0].get_xticks()
    assert np.array_equal(ticks, np.round(ticks))
    assert len(fig.axes[0].patches) == 1  # the shaded span


def test_cell_values_stay_readable_as_maps_grow():
    small, large = viz.plot_frame_map(frame_map(4)), viz.plot_frame_map(frame_map(12))
    assert all(t.get_fontsize() >= viz.CELL_FONT for t in large.axes[0].texts)
    assert large.get_size_inches()[0] > small.get_size_inches()[0]  # the figure grows instead of the font shrinking
    assert large.axes[0].get_window_extent().width / 12 >= 0.4 * viz.DPI  # cells of 0.4 inch or more


def test_metrics_panels(tmp_path):
    fig = viz.plot_metrics([-1, 0, 1], {"flow": [0.1, 0.5, 0.9], "psnr_first": [30, float("inf"), 25]},
                           tmp_path / "metrics.png", title="toy", targets={"flow": 0.5})
    assert_png(tmp_path / "metrics.png", fig)
    assert [ax.get_title() for ax in fig.axes] == ["flow", "psnr_first"]
    assert len(fig.axes[1].get_lines()[0].get_xdata()) == 2  # the inf point is left out
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == [0.5, 0.5]  # the target line
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["-1", "0", "1"]
    assert len(viz.plot_metrics([0, 1], {str(i): [0, 1] for i in range(5)}, ncols=3).axes) == 6  # 2 rows, one blank


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


@pytest.mark.parametrize("call, message", [
    # a recording's (steps, curve) pair where a mapping label -> curve is expected
    (lambda: viz.plot_reference_mass(([0, 1], [0.5, 0.4])), "curves must be a mapping label -> values"),
    # one video where a mapping label -> video is expected (was: "truth value ... is ambiguous")
    (lambda: viz.contact_sheet(np.zeros((3, 8, 8, 3))), "videos must be a mapping label -> video"),
    (lambda: viz.plot_frame_map_grid([np.eye(3)]), "maps must be a mapping title -> "),
    (lambda: viz.plot_metrics([0, 1], [[1, 2]]), "series must be a mapping metric name"),
    # the path given where the second map goes
    (lambda: viz.plot_frame_map_diff(np.eye(3), "diff.png"), "b is a file path"),
    (lambda: viz.plot_frame_map(np.eye(3), 3), "path must be a file path"),
    (lambda: viz.plot_frame_map(np.eye(3), reference_frames="0"), "reference_frames must be a frame index"),
    (lambda: viz.contact_sheet({"a": np.zeros((3, 8, 8, 3)), "b": np.zeros((3, 6, 8, 3))}), "one frame size"),
    (lambda: viz.contact_sheet({"a": np.zeros((3, 8, 8, 3))}, max_frames=0), "max_frames must be an int >= 1"),
    (lambda: viz.plot_metrics([0], {"a": [1]}, targets={"b": 0}), "targets name metrics that are not in series"),
])
def test_plausible_misuse_names_the_argument(call, message):
    with pytest.raises(at.ConfigError, match=message):
        call()


def test_one_reference_frame_may_be_an_int():
    labels = [t.get_text() for t in viz.plot_frame_map(np.eye(3), reference_frames=-1).axes[0].get_xticklabels()]
    assert labels == ["0", "1", "2 (ref)"]
