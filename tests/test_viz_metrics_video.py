"""Figures, metrics and video files: real PNGs, sensible numbers, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import attnsteer as at
from attnsteer import metrics, viz
from attnsteer.videoio import as_frames, load_video, save_video


def moving_square(frames: int = 8, size: int = 48, speed: int = 3) -> np.ndarray:
    video = np.full((frames, size, size, 3), 0.2, dtype=np.float32)
    video[..., 1] = np.linspace(0.1, 0.4, size)[None, None, :]
    for t in range(frames):
        x = 4 + t * speed
        video[t, 18:30, x : x + 10] = (1.0, 0.3, 0.2)
    return video


def test_video_round_trip(tmp_path):
    video = moving_square()
    for suffix in (".mp4", ".gif"):
        loaded = load_video(save_video(video, tmp_path / f"v{suffix}"))
        assert loaded.shape == (8, 48, 48, 3)
        assert np.abs(loaded.astype(float) - as_frames(video).astype(float)).mean() < 12
    with pytest.raises(at.ConfigError, match=r"\.mp4"):
        save_video(video, tmp_path / "v.avi")
    with pytest.raises(at.ConfigError, match=r"video must be frames"):
        as_frames(np.zeros((4, 4)))


def test_motion_metrics_tell_moving_from_still():
    moving, still = moving_square(), np.repeat(moving_square()[:1], 8, axis=0)
    assert metrics.flow_magnitude(moving) > 10 * metrics.flow_magnitude(still) + 0.1
    assert metrics.dynamic_degree(moving).moves and not metrics.dynamic_degree(still).moves
    assert metrics.temporal_flicker(still) == 1.0 > metrics.temporal_flicker(moving)
    assert metrics.frame_difference_energy(still) == 0.0 < metrics.frame_difference_energy(moving)
    assert metrics.mean_flow(moving)[0] > 0.5  # the square moves right


def test_fidelity_metrics():
    frame = as_frames(moving_square())[0]
    noisy = np.clip(frame.astype(int) + np.random.RandomState(0).randint(-30, 30, frame.shape), 0, 255).astype(np.uint8)
    assert metrics.psnr(frame, frame) == float("inf") and metrics.ssim(frame, frame) == pytest.approx(1.0)
    assert metrics.psnr(frame, noisy) < 30 and metrics.ssim(frame, noisy) < 0.9
    row = metrics.evaluate(moving_square(), reference=frame)
    assert set(row) >= {"flow", "dynamic_degree", "flicker", "psnr_first", "ssim_later"}
    table = metrics.format_table([{"gamma": 0.0, **row}, {"gamma": 1.0, **row}])
    assert table.splitlines()[0].split()[0] == "gamma" and len(table.splitlines()) == 4


def assert_png(path, width, height):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (width, height)
        assert np.asarray(im.convert("L")).std() > 5


def test_figures_are_real_pngs(tmp_path):
    m = torch.softmax(torch.randn(5, 5), -1)
    viz.plot_frame_map(m, tmp_path / "map.png")
    assert_png(tmp_path / "map.png", 520, 440)
    viz.plot_frame_map_diff(m, m.flip(0), tmp_path / "diff.png")
    assert_png(tmp_path / "diff.png", 520, 440)
    viz.plot_reference_mass({"γ=0": [0.5, 0.4, 0.45], "γ=1": ([0, 1, 2], torch.tensor([0.3, 0.2, 0.4]))},
                            tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png", 600, 400)
    viz.plot_frame_map_grid({f"step {i}": m for i in range(3)}, tmp_path / "grid.png", ncols=2)
    assert_png(tmp_path / "grid.png", 720, 640)
    viz.contact_sheet({"a": moving_square(), "b": moving_square()[::-1]}, tmp_path / "sheet.png", max_frames=4)
    assert_png(tmp_path / "sheet.png", 610, 290)
    viz.plot_metrics([0, 1, 2], {"motion": [1, 2, 3], "ssim": [0.9, 0.8, 0.7]}, tmp_path / "metrics.png")
    assert_png(tmp_path / "metrics.png", 680, 320)


def test_figure_inputs_are_checked():
    with pytest.raises(at.ConfigError, match="square"):
        viz.plot_frame_map(np.zeros((2, 3)))
    with pytest.raises(at.ConfigError, match="at least one"):
        viz.plot_reference_mass({})
