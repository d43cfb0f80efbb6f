"""One figure that compares two runs: their frames row by row, and the attention picture that explains the difference.

Used by the recipe gallery (``python -m attnsteer.toy.gallery``): the unsteered and the steered clip
side by side, beside the change the recipe made to the frame map.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ..errors import ConfigError
from .videoio import as_frames
from .viz import TITLE_FONT, save_figure, spread_frames


def plot_side_by_side(
    videos: Mapping[str, Any], map_diff: Any, path: str | Path | None = None, *, title: str,
    map_title: str, max_frames: int = 5, upscale: int = 1,
) -> Figure:
    """Rows of frames (one row per video, labels on the left, frame indices on top) and, on the right,
    an [F, F] frame-map difference (query frame rows, key frame columns) on a diverging scale about 0."""
    rows = {label: as_frames(v, f"videos[{label!r}]") for label, v in videos.items()}
    if len(rows) < 1:
        raise ConfigError("videos must hold at least one video (label -> frames [T, H, W, 3])")
    diff = np.asarray(map_diff, dtype=np.float64)
    if diff.ndim != 2 or diff.shape[0] != diff.shape[1]:
        raise ConfigError(f"map_diff must be a square [F, F] frame map difference, got shape {diff.shape}")
    length = min(len(frames) for frames in rows.values())
    picks = spread_frames(length, max_frames)
    fig = Figure(figsize=(1.6 * len(picks) + 4.4, 1.7 * len(rows) + 1.0), layout="constrained")
    grid = fig.add_gridspec(len(rows), len(picks) + 2, width_ratios=[1] * len(picks) + [0.15, 2.4])
    for r, (label, frames) in enumerate(rows.items()):
        for c, t in enumerate(picks):
            ax = fig.add_subplot(grid[r, c])
            frame = frames[t].repeat(upscale, axis=0).repeat(upscale, axis=1)
            ax.imshow(frame, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
    ax = fig.add_subplot(grid[:, -1])
    limit = float(np.nanmax(np.abs(diff))) or 1e-12
    image = ax.imshow(diff, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit))
    ticks = range(diff.shape[0])
    ax.set_xticks(ticks, [str(k) for k in ticks], fontsize=8)
    ax.set_yticks(ticks, [str(q) for q in ticks], fontsize=8)
    ax.set_xlabel("key frame")
    ax.set_ylabel("query frame")
    ax.set_title(map_title, fontsize=9, wrap=True)
    fig.colorbar(image, ax=ax, label="Δ attention mass", shrink=0.8)
    fig.suptitle(title, fontsize=TITLE_FONT, wrap=True)
    return save_figure(fig, path)
