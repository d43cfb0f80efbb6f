"""Video and image files for the CLI and the demo: one frame format (uint8 [T, H, W, 3]), .mp4 and .gif.

(Named ``videoio`` rather than ``video``: a submodule called ``video`` would replace the
``attnsteer.video`` selector as soon as it was imported.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".gif")
ACCEPTED = ("frames [T, H, W, 3] or [T, 3, H, W] in a numpy array or torch tensor (uint8, or floats in 0..1), "
            "a list of PIL images, or a pipeline output with .frames")
_FLOAT_SLACK = 0.01  # floats this far outside 0..1 are rounding and get clipped; further out is a wrong range
_GIF_COMMENT = re.compile(rb"attnsteer frame_ms=(\d+)")


def as_frames(video: Any, name: str = "video") -> np.ndarray:
    """uint8 [T, H, W, 3] from any of the forms in ``ACCEPTED``.

    Floats must be in 0..1 (what diffusers pipelines return); other ranges are not guessed but
    rejected, since -1..1 and 0..255 both look like plausible pixels.
    """
    if hasattr(video, "frames"):
        video = video.frames[0]
    if isinstance(video, (list, tuple)) and video and all(isinstance(f, Image.Image) for f in video):
        sizes = {f.size for f in video}
        if len(sizes) > 1:
            raise ConfigError(f"{name}: PIL frames must share one size, got {sorted(sizes)}")
        video = np.stack([np.asarray(f.convert("RGB")) for f in video])
    if hasattr(video, "detach"):
        tensor = video.detach().cpu()
        video = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    try:
        array = np.asarray(video)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be {ACCEPTED}; got {type(video).__name__} ({exc})") from None
    if array.ndim == 4 and array.shape[-1] != 3 and array.shape[1] == 3:
        array = array.transpose(0, 2, 3, 1)
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape or array.dtype.kind not in "uif":
        raise ConfigError(f"{name} must be {ACCEPTED}; got {type(video).__name__} of shape {array.shape}, "
                          f"dtype {array.dtype}")
    return _to_uint8(array, name)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    low, high = float(array.min()), float(array.max())
    if array.dtype.kind in "ui":
        if low < 0 or high > 255:
            raise ConfigError(f"{name}: integer pixels must be in 0..255, got {low:g}..{high:g}")
        return array.astype(np.uint8)
    if not (low >= -_FLOAT_SLACK and high <= 1 + _FLOAT_SLACK):  # also catches NaN
        raise ConfigError(f"{name}: float pixels must be in 0..1, got {low:.3g}..{high:.3g} "
                          "(map -1..1 with (x + 1) / 2 and 0..255 with x / 255)")
    return (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def save_video(video: Any, path: str | Path, fps: float = 8) -> Path:
    """Write ``video`` (anything :func:`as_frames` takes) as .mp4 (H.264, yuv420p) or .gif (Pillow).

    H.264 in yuv420p needs even sides, so an .mp4 of an odd-sized video gains one
    edge-replicated row or column; a .gif keeps the exact size.
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"path must end in one of {VIDEO_SUFFIXES}, got {str(path)!r}")
    if not fps > 0:
        raise ConfigError(f"fps must be > 0, got {fps!r}")
    frames = as_frames(video)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        _save_gif(frames, path, fps)
        return path
    import imageio.v2 as imageio

    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    # macro_block_size=1: no resizing to multiples of 16, which would distort tiny videos.
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=8,
                            ffmpeg_log_level="error", pixelformat="yuv420p") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def _save_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    # GIF delays are in hundredths of a second, and browsers slow down anything under 2.
    if fps > 50:
        raise ConfigError(f"fps must be <= 50 for a .gif (frame delays are in 1/100 s), got {fps!r}")
    frame_ms = round(1000 / fps)
    images = [Image.fromarray(f) for f in frames]
    # Pillow merges identical consecutive frames into one longer frame; the comment lets
    # load_video split them again, so a still video keeps its frame count.
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   comment=f"attnsteer frame_ms={frame_ms}")


def load_video(path: str | Path) -> np.ndarray:
    """uint8 [T, H, W, 3] from an .mp4 or .gif (frames a .gif merged on saving are repeated back)."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"path must end in one of {VIDEO_SUFFIXES}, got {str(path)!r}")
    if not path.is_file():
        raise ConfigError(f"path {str(path)!r} is not a file")
    if path.suffix.lower() == ".gif":
        return _load_gif(path)
    import imageio.v2 as imageio

    return np.stack([f[..., :3] for f in imageio.mimread(path, memtest=False)])


def _load_gif(path: Path) -> np.ndarray:
    frames = []
    with Image.open(path) as im:
        match = _GIF_COMMENT.search(im.info.get("comment", b""))
        for i in range(im.n_frames):
            im.seek(i)
            repeats = max(1, round(im.info.get("duration", 0) / int(match.group(1)))) if match else 1
            frames += [np.asarray(im.convert("RGB"))] * repeats
    return np.stack(frames)


def load_image(image: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or an image (the conditioning image of image-to-video)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, Path)):
        raise ConfigError(f"image must be a path or a PIL image, got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise ConfigError(f"image {str(path)!r} is not a file")
    with Image.open(path) as im:
        return im.convert("RGB")
