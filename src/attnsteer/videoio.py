"""Video and image I/O for the CLI and the demo: one canonical frame format, mp4/gif files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".gif")


def as_frames(video: Any) -> np.ndarray:
    """uint8 [T, H, W, 3] from a list of PIL images, an array or tensor [T, H, W, 3] / [T, 3, H, W]
    (floats in 0..1 or uint8), or a pipeline output with ``.frames``."""
    if hasattr(video, "frames"):
        video = video.frames[0]
    if isinstance(video, (list, tuple)) and video and isinstance(video[0], Image.Image):
        video = np.stack([np.asarray(f.convert("RGB")) for f in video])
    if hasattr(video, "detach"):  # torch: keep uint8 as uint8, floats as float32
        video = video.detach().cpu()
        video = (video if video.dtype == torch.uint8 else video.float()).numpy()
    array = np.asarray(video)
    if array.ndim == 4 and array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ConfigError(
            "video must be frames [T, H, W, 3] or [T, 3, H, W] (floats in 0..1 or uint8), a list of PIL images, or a "
            f"pipeline output with .frames; got shape {array.shape}"
        )
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    return array


def save_video(video: Any, path: str | Path, fps: int = 8) -> Path:
    """Write ``video`` as .mp4 (H.264 through imageio-ffmpeg) or .gif (Pillow)."""
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ConfigError(f"video path must end in one of {VIDEO_SUFFIXES}, got {str(path)!r}")
    frames = as_frames(video)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return path
    import imageio.v2 as imageio

    h, w = frames.shape[1:3]
    pad = ((0, 0), (0, (-h) % 16), (0, (-w) % 16), (0, 0))  # H.264 wants sizes divisible by 16
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=8,
                            ffmpeg_log_level="error", pixelformat="yuv420p") as writer:
        for frame in np.pad(frames, pad, mode="edge"):
            writer.append_data(frame)
    return path


def load_video(path: str | Path) -> np.ndarray:
    """uint8 [T, H, W, 3] from an .mp4 or .gif written by :func:`save_video` (mp4 keeps its padding)."""
    path = Path(path)
    if path.suffix == ".gif":
        with Image.open(path) as im:
            frames = []
            for i in range(im.n_frames):
                im.seek(i)
                frames.append(np.asarray(im.convert("RGB")))
        return np.stack(frames)
    import imageio.v2 as imageio

    return np.stack([f[..., :3] for f in imageio.mimread(path, memtest=False)])


def load_image(path_or_image: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or an image."""
    if isinstance(path_or_image, Image.Image):
        return path_or_image.convert("RGB")
    path = Path(path_or_image)
    if not path.is_file():
        raise ConfigError(f"--image {str(path)!r} is not a file")
    with Image.open(path) as im:
        return im.convert("RGB")
