"""Weight-free motion and fidelity metrics: videos in, numbers out.

These are stand-ins for VBench's scores, which need downloaded networks (RAFT, DINO, DreamSim):
optical flow from OpenCV's Farneback method (dense, no weights, robust on small frames),
frame differences, PSNR/SSIM from scikit-image. Report them as changes against the same seed's
baseline, never as VBench numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from .errors import ConfigError
from .videoio import as_frames


def optical_flow(video: Any) -> np.ndarray:
    """Farneback flow between consecutive frames: float32 [T-1, H, W, 2] in pixels."""
    import cv2

    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in as_frames(video)]
    if len(gray) < 2:
        raise ConfigError("video must have at least 2 frames to measure motion")
    return np.stack([
        cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=7, iterations=3, poly_n=5,
                                     poly_sigma=1.1, flags=0)
        for a, b in zip(gray[:-1], gray[1:])
    ])


@attrs.frozen
class DynamicDegree:
    """VBench's recipe on Farneback flow: per frame pair, the mean of the top 5% flow magnitudes;
    a pair passes above 6 * min(H, W) / 256; the video moves if round(4 * n / 16) pairs pass."""

    moves: bool
    score: float
    passing_pairs: int
    threshold: float


def dynamic_degree(video: Any) -> DynamicDegree:
    frames = as_frames(video)
    magnitude = np.linalg.norm(optical_flow(frames), axis=-1).reshape(len(frames) - 1, -1)
    top = np.sort(magnitude, axis=1)[:, -max(1, int(0.05 * magnitude.shape[1])):]
    per_pair = top.mean(axis=1)
    threshold = 6.0 * min(frames.shape[1:3]) / 256.0
    passing = int((per_pair > threshold).sum())
    return DynamicDegree(moves=passing >= round(4 * len(per_pair) / 16), score=float(per_pair.mean()),
                         passing_pairs=passing, threshold=threshold)


def flow_magnitude(video: Any) -> float:
    """Mean optical-flow magnitude in pixels per frame."""
    return float(np.linalg.norm(optical_flow(video), axis=-1).mean())


def mean_flow(video: Any) -> np.ndarray:
    """Mean flow vector (dx, dy) in pixels per frame: the dominant direction of motion."""
    return optical_flow(video).reshape(-1, 2).mean(axis=0)


def frame_difference_energy(video: Any) -> float:
    """Mean squared difference of consecutive frames, on a 0..1 intensity scale."""
    frames = as_frames(video).astype(np.float32) / 255.0
    return float(np.mean(np.diff(frames, axis=0) ** 2))


def temporal_flicker(video: Any) -> float:
    """(255 - mean |f_t - f_{t-1}|) / 255: 1.0 for a still video, lower for flicker or motion."""
    frames = as_frames(video).astype(np.float32)
    return float((255.0 - np.abs(np.diff(frames, axis=0)).mean()) / 255.0)


def psnr(a: Any, b: Any) -> float:
    """PSNR in dB of two uint8-range images (inf when identical)."""
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _image(a, "a"), _image(b, "b")
    if np.array_equal(x, y):
        return float("inf")
    return float(peak_signal_noise_ratio(x, y, data_range=255))


def ssim(a: Any, b: Any) -> float:
    """SSIM of two images (1.0 when identical)."""
    from skimage.metrics import structural_similarity

    x, y = _image(a, "a"), _image(b, "b")
    return float(structural_similarity(x, y, channel_axis=-1, data_range=255, win_size=min(7, *x.shape[:2]) // 2 * 2 + 1))


def _image(image: Any, name: str) -> np.ndarray:
    array = as_frames(np.asarray(image)[None] if np.asarray(image).ndim == 3 else image)
    if len(array) != 1:
        raise ConfigError(f"{name} must be one image [H, W, 3], got {len(array)} frames")
    return array[0]


def evaluate(video: Any, reference: Any = None) -> dict[str, float]:
    """All metrics of one video; fidelity ones only when the reference image is given."""
    frames = as_frames(video)
    dd = dynamic_degree(frames)
    out = {
        "flow": flow_magnitude(frames),
        "dynamic_degree": dd.score,
        "moves": float(dd.moves),
        "frame_diff": frame_difference_energy(frames),
        "flicker": temporal_flicker(frames),
    }
    if reference is not None:
        ref = np.asarray(as_frames(np.asarray(reference)[None])[0])
        if ref.shape != frames.shape[1:]:
            from PIL import Image

            ref = np.asarray(Image.fromarray(ref).resize(frames.shape[2:0:-1]))
        out["psnr_first"] = psnr(frames[0], ref)
        out["ssim_first"] = ssim(frames[0], ref)
        out["ssim_later"] = float(np.mean([ssim(f, ref) for f in frames[1:]]))
    return out


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table of ``rows`` (numbers to 4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    table = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in table]
    return "\n".join(lines)
