"""Weight-free metrics: a moving square moves, a still video does not, a frame matches itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import attnsteer as at
from attnsteer.figures import metrics


def moving_square(frames: int = 8, size: int = 48, speed: int = 3) -> np.ndarray:
    video = np.full((frames, size, size, 3), 0.2, dtype=np.float32)
    video[..., 1] = np.linspace(0.1, 0.4, size)[None, None, :]
    for t in range(frames):
        x = 4 + t * speed
        video[t, 18:30, x : x + 10] = (1.0, 0.3, 0.2)
    return video


MOVING = moving_square()
STILL = np.repeat(MOVING[:1], 8, axis=0)


def test_moving_square_scores_more_motion_than_a_still_video():
    assert metrics.flow_magnitude(MOVING) > 10 * metrics.flow_magnitude(STILL) + 0.1
    moving, still = metrics.dynamic_degree(MOVING), metrics.dynamic_degree(STILL)
    assert moving.moves and not still.moves
    assert moving.score > still.score
    assert metrics.temporal_flicker(STILL) == 1.0 > metrics.temporal_flicker(MOVING)
    assert metrics.frame_difference_energy(STILL) == 0.0 < metrics.frame_difference_energy(MOVING)
    dx, dy = metrics.mean_flow(MOVING)
    assert dx > 0.1 and abs(dy) < dx  # the square moves right


def test_dynamic_degree_follows_vbench_recipe():
    dd = metrics.dynamic_degree(MOVING)
    assert dd.threshold == pytest.approx(6 * 48 / 256)
    assert dd.required_pairs == round(4 * 8 / 16) and len(dd.pair_scores) == 7
    assert max(dd.pair_scores) == pytest.approx(3.0, abs=1.0)  # the top 5% of flow is the square's 3 px/frame
    halved = metrics.dynamic_degree(MOVING, fps=16)  # subsampled to 8 fps: every second frame
    assert len(halved.pair_scores) == 3 and halved.threshold == dd.threshold
    slow = metrics.dynamic_degree(MOVING, fps=4)  # below 8 fps the threshold rises
    assert slow.threshold == pytest.approx(2 * dd.threshold)
    with pytest.raises(at.ConfigError, match="video must have at least 2 frames"):
        metrics.dynamic_degree(MOVING[:1])
    with pytest.raises(at.ConfigError, match="fps must be > 0"):
        metrics.dynamic_degree(MOVING, fps=0)


def test_fidelity_of_a_frame_against_itself_and_a_noisy_copy():
    frame = (MOVING[0] * 255).round().astype(np.uint8)
    noise = np.random.default_rng(0).integers(-30, 30, frame.shape)
    noisy = np.clip(frame.astype(int) + noise, 0, 255).astype(np.uint8)
    assert metrics.psnr(frame, frame) == math.inf and metrics.ssim(frame, frame) == pytest.approx(1.0)
    assert metrics.psnr(noisy, frame) < 30 and metrics.ssim(noisy, frame) < 0.9
    # PIL images and [3, H, W] tensors are images too; a 6x6 image gets a smaller SSIM window
    assert metrics.ssim(Image.fromarray(frame), torch.from_numpy(frame).permute(2, 0, 1)) == pytest.approx(1.0)
    assert metrics.ssim(frame[:6, :6], noisy[:6, :6]) < 1.0
    with pytest.raises(at.ConfigError, match="image and reference must have the same size"):
        metrics.psnr(frame, frame[:10])
    with pytest.raises(at.ConfigError, match="reference must be one image"):
        metrics.ssim(frame, MOVING)


def test_evaluate_and_table():
    reference = Image.fromarray((MOVING[0] * 255).round().astype(np.uint8)).resize((96, 96))  # resized back to 48
    row = metrics.evaluate(MOVING, reference)
    assert set(row) == {"flow", "dynamic_degree", "moves", "frame_diff", "flicker",
                        "psnr_first", "ssim_first", "psnr_later", "ssim_later"}
    assert row["moves"] == 1.0 and row["ssim_first"] > row["ssim_later"]
    assert set(metrics.evaluate(STILL)) == {"flow", "dynamic_degree", "moves", "frame_diff", "flicker"}

    rows = [{"label": "vanilla", "gamma": 0.0, **row}, {"label": "dymos", "gamma": 1.0, "flow": math.inf}]
    lines = metrics.format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["label", "gamma", "flow"] and len(lines) == 4
    assert len({len(line) for line in lines[:3]}) == 1  # fixed width
    assert "inf" in lines[3] and lines[3].startswith("dymos")
    assert metrics.format_table(rows, columns=["gamma"]).splitlines()[2].strip() == "0"
    assert metrics.format_table([]) == "(no rows)"
    with pytest.raises(at.ConfigError, match=r"columns \['nope'\] are in no row"):
        metrics.format_table(rows, columns=["nope"])
