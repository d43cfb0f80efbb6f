"""Weight-free motion and fidelity metrics: videos in, numbers out.

These are stand-ins for VBench's scores, which need downloaded networks (RAFT for Dynamic
Degree, DINO and DreamSim for the I2V consistency scores): optical flow from OpenCV, frame
differences, PSNR and SSIM from scikit-image. They move in the same direction as the scores
they stand in for, not by the same amounts: report them as changes against the same seed's
baseline (gamma = 0), never as VBench numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from PIL import Image

from ..errors import ConfigError
from .videoio import as_frames

TOP_FRACTION = 0.05  # VBench: the mean of the largest 5% of flow magnitudes scores a frame pair


def optical_flow(video: Any) -> np.ndarray:
    """Dense flow between consecutive frames: float32 [T-1, H, W, 2] in pixels (dx, dy).

    OpenCV's Farneback method: dense, deterministic, no weights, and it stays accurate on
    the tiny frames of the toy and tiny models (32 px), where DIS's fixed 8 px patches and
    presets tuned for large frames are not; at 832x480 it also runs in about half the time of
    DIS's medium preset on CPU. The pyramid gets deeper with the frame size so that motion of
    a few percent of the frame, the range VBench's threshold sits in, is still found.
    """
    import cv2

    frames = as_frames(video)
    if len(frames) < 2:
        raise ConfigError(f"video must have at least 2 frames to measure motion, got {len(frames)}")
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    levels = max(1, int(math.log2(min(frames.shape[1:3]) / 16)))
    return np.stack([
        cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=levels, winsize=15, iterations=3, poly_n=5,
                                     poly_sigma=1.1, flags=0)
        for a, b in zip(gray[:-1], gray[1:])
    ])


def _magnitudes(video: Any) -> np.ndarray:
    """Flow magnitude per frame pair and pixel: [T-1, H*W]."""
    flow = optical_flow(video)
    return np.linalg.norm(flow, axis=-1).reshape(len(flow), -1)


@attrs.frozen
class DynamicDegree:
    """Result of :func:`dynamic_degree`: whether the video moves, and the numbers behind it."""

    moves: bool  # at least ``required_pairs`` frame pairs score above ``threshold``
    score: float  # mean over frame pairs of the pair scores, in pixels
    pair_scores: tuple[float, ...]  # per consecutive frame pair: mean of the top 5% flow magnitudes
    threshold: float  # pixels
    required_pairs: int


def dynamic_degree(video: Any, fps: float | None = None) -> DynamicDegree:
    """VBench's Dynamic Degree recipe on Farneback flow instead of RAFT (a stand-in, not VBench's number).

    Each consecutive frame pair scores the mean of its top 5% flow magnitudes; a pair passes
    above 6 * min(H, W) / 256 pixels; the video moves when at least round(4 * n / 16) pairs
    pass, n being the number of frames (as in VBench's code). With ``fps``, frames are first
    subsampled to about 8 fps and the threshold raised below 8 fps, as VBench does for .mp4
    files; without it the frames are taken as they are.
    """
    frames = as_frames(video)
    factor = 1.0
    if fps is not None:
        if not fps > 0:
            raise ConfigError(f"fps must be > 0 or None, got {fps!r}")
        frames = frames[:: max(1, round(fps / 8))]
        factor = max(1.0, 8.0 / fps)
    return _dynamic_degree(_magnitudes(frames), frames.shape, factor)


def _dynamic_degree(magnitudes: np.ndarray, shape: tuple[int, ...], factor: float) -> DynamicDegree:
    top = max(1, int(magnitudes.shape[1] * TOP_FRACTION))
    pair_scores = np.sort(magnitudes, axis=1)[:, -top:].mean(axis=1)
    threshold = factor * 6.0 * min(shape[1:3]) / 256.0
    required = round(4 * shape[0] / 16)
    return DynamicDegree(moves=bool((pair_scores > threshold).sum() >= required), score=float(pair_scores.mean()),
                         pair_scores=tuple(float(s) for s in pair_scores), threshold=threshold,
                         required_pairs=required)


def flow_magnitude(video: Any) -> float:
    """Mean optical-flow magnitude over all pixels and frame pairs, in pixels per frame."""
    return float(_magnitudes(video).mean())


def mean_flow(video: Any) -> np.ndarray:
    """Mean flow vector (dx, dy) in pixels per frame: the dominant direction of motion."""
    return optical_flow(video).reshape(-1, 2).mean(axis=0)


def frame_difference_energy(video: Any) -> float:
    """Mean squared difference of consecutive frames on a 0..1 scale: 0 for a still video."""
    frames = _at_least_two(video).astype(np.float32) / 255.0
    return float(np.mean(np.diff(frames, axis=0) ** 2))


def temporal_flicker(video: Any) -> float:
    """(255 - mean |f_t - f_{t-1}|) / 255: 1.0 for a still video, lower for flicker or motion."""
    frames = _at_least_two(video).astype(np.float32)
    return float((255.0 - np.abs(np.diff(frames, axis=0)).mean()) / 255.0)


def _at_least_two(video: Any) -> np.ndarray:
    frames = as_frames(video)
    if len(frames) < 2:
        raise ConfigError(f"video must have at least 2 frames to compare consecutive frames, got {len(frames)}")
    return frames


def psnr(image: Any, reference: Any) -> float:
    """PSNR in dB of an image against a reference of the same size; inf when they are identical."""
    x, y = _pair(image, reference)
    if np.array_equal(x, y):
        return math.inf
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(y, x, data_range=255))


def ssim(image: Any, reference: Any) -> float:
    """SSIM (colour; 7x7 window, or the largest odd one that fits) against a reference; 1.0 when identical."""
    from skimage.metrics import structural_similarity

    x, y = _pair(image, reference)
    side = min(7, *x.shape[:2])
    if side < 3:
        raise ConfigError(f"image must be at least 3x3 pixels for SSIM, got {x.shape[0]}x{x.shape[1]}")
    return float(structural_similarity(y, x, channel_axis=-1, data_range=255, win_size=side - (side + 1) % 2))


def _pair(image: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_image(image, "image"), as_image(reference, "reference")
    if x.shape != y.shape:
        raise ConfigError(f"image and reference must have the same size, got {x.shape[:2]} and {y.shape[:2]}")
    return x, y


def as_image(image: Any, name: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] from a PIL image, or an array or tensor [H, W, 3] / [3, H, W] (uint8 or floats in 0..1)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach") or isinstance(image, np.ndarray):
        if image.ndim != 3:
            raise ConfigError(f"{name} must be one image [H, W, 3] or [3, H, W], got shape {tuple(image.shape)}")
        return as_frames(image[None], name)[0]
    raise ConfigError(f"{name} must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}")


def fidelity(video: Any, reference: Any) -> dict[str, float]:
    """PSNR and SSIM of frame 0, and their means over the later frames, against the reference image.

    The reference is resized (Lanczos, like diffusers' image processor) to the video's size
    first, since image-to-video pipelines resize the conditioning image the same way.
    """
    frames = as_frames(video)
    ref = as_image(reference, "reference")
    h, w = frames.shape[1:3]
    if ref.shape[:2] != (h, w):
        ref = np.asarray(Image.fromarray(ref).resize((w, h), Image.Resampling.LANCZOS))
    later = frames[1:]
    return {
        "psnr_first": psnr(frames[0], ref),
        "ssim_first": ssim(frames[0], ref),
        "psnr_later": float(np.mean([psnr(f, ref) for f in later])) if len(later) else math.nan,
        "ssim_later": float(np.mean([ssim(f, ref) for f in later])) if len(later) else math.nan,
    }


def evaluate(video: Any, reference: Any = None, *, fps: float | None = None) -> dict[str, float]:
    """Every metric of one video (fidelity only with a reference image), as one table row.

    Keys: flow, dynamic_degree (the mean pair score), moves (1.0 or 0.0), frame_diff, flicker,
    and with ``reference`` psnr_first, ssim_first, psnr_later, ssim_later. Weight-free
    stand-ins: compare rows of the same seed, never with published VBench numbers.
    """
    frames = as_frames(video)
    magnitudes = _magnitudes(frames)
    dd = dynamic_degree(frames, fps) if fps is not None else _dynamic_degree(magnitudes, frames.shape, 1.0)
    row = {
        "flow": float(magnitudes.mean()),
        "dynamic_degree": dd.score,
        "moves": float(dd.moves),
        "frame_diff": frame_difference_energy(frames),
        "flicker": temporal_flicker(frames),
    }
    if reference is not None:
        row.update(fidelity(frames, reference))
    return row


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table: one line per row, numbers to 4 significant digits and right-aligned.

    ``columns`` picks and orders the columns (default: every key, in order of first appearance);
    a row without a column shows an empty cell.
    """
    if not rows:
        return "(no rows)"
    known = list(dict.fromkeys(k for row in rows for k in row))
    columns = list(columns) if columns is not None else known
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ConfigError(f"columns {unknown} are in no row; the rows have {known}")
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    numeric = [all(_is_number(row.get(c, 0)) for row in rows) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if _is_number(value) and not isinstance(value, numbers.Integral):
        return f"{float(value):.4g}"
    return str(value)
