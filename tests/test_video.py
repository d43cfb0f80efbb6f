"""Video files and frame conversion: round trips, every accepted input form, clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import attnsteer as at
from attnsteer.figures.videoio import as_frames, load_image, load_video, save_video


def moving_square(frames: int = 8, size: int = 32) -> np.ndarray:
    video = np.full((frames, size, size, 3), 40, dtype=np.uint8)
    for t in range(frames):
        video[t, 8:20, 2 + 2 * t : 12 + 2 * t] = (230, 80, 50)
    return video


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
@pytest.mark.parametrize("size", [32, 64])
def test_round_trip_keeps_shape_and_frames(tmp_path, suffix, size):
    video = moving_square(size=size)
    path = save_video(video, tmp_path / "sub" / f"v{suffix}", fps=8)
    loaded = load_video(path)
    assert path.is_file() and loaded.shape == video.shape and loaded.dtype == np.uint8
    assert np.abs(loaded.astype(float) - video).mean() < 8


def test_gif_keeps_the_frames_of_a_still_video(tmp_path):
    still = np.repeat(moving_square()[:1], 6, axis=0)
    still[4:] = 200  # runs of identical frames: 4 then 2
    assert load_video(save_video(still, tmp_path / "still.gif", fps=8)).shape[0] == 6


def test_odd_sizes(tmp_path):
    video = moving_square()[:, :31, :29]
    assert load_video(save_video(video, tmp_path / "odd.gif")).shape == (8, 31, 29, 3)
    assert load_video(save_video(video, tmp_path / "odd.mp4")).shape == (8, 32, 30, 3)  # H.264 4:2:0: even sides


def test_as_frames_accepts_every_documented_form():
    video = moving_square(frames=3)
    floats = video.astype(np.float32) / 255
    forms = [
        video,
        floats,
        [Image.fromarray(f) for f in video],
        torch.from_numpy(floats),
        torch.from_numpy(floats).permute(0, 3, 1, 2),  # [T, 3, H, W]
        torch.from_numpy(video),
        torch.from_numpy(floats).to(torch.bfloat16),
        SimpleNamespace(frames=[floats]),  # a diffusers pipeline output
    ]
    for form in forms:
        frames = as_frames(form)
        assert frames.dtype == np.uint8 and frames.shape == video.shape
        assert np.abs(frames.astype(int) - video).max() <= 2


def test_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(at.ConfigError, match=r"video must be frames \[T, H, W, 3\]"):
        as_frames(np.zeros((4, 4)))
    with pytest.raises(at.ConfigError, match="video must be"):
        as_frames("not a video")
    with pytest.raises(ValueError, match=r"video: float pixels must be in 0\.\.1, got -1\.\.1"):
        as_frames(np.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3))
    with pytest.raises(at.ConfigError, match=r"video: float pixels must be in 0\.\.1"):
        as_frames(np.full((2, 4, 4, 3), 128.0))
    with pytest.raises(at.ConfigError, match="PIL frames must share one size"):
        as_frames([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))])
    with pytest.raises(at.ConfigError, match=r"path must end in one of \('\.mp4', '\.gif'\)"):
        save_video(moving_square(), tmp_path / "v.avi")
    with pytest.raises(at.ConfigError, match="fps must be > 0"):
        save_video(moving_square(), tmp_path / "v.mp4", fps=0)
    with pytest.raises(at.ConfigError, match="is not a file"):
        load_video(tmp_path / "missing.mp4")


def test_load_image(tmp_path):
    rgba = Image.new("RGBA", (6, 5), (10, 20, 30, 128))
    rgba.save(tmp_path / "in.png")
    for source in (rgba, tmp_path / "in.png", str(tmp_path / "in.png")):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (6, 5)
    with pytest.raises(at.ConfigError, match="image .* is not a file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(at.ConfigError, match="image must be a path or a PIL image"):
        load_image(np.zeros((4, 4, 3)))
