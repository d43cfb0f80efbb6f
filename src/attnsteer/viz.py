"""Figures of frame-level attention and of videos (matplotlib, no display needed).

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot, no global backend),
returns it, and writes a PNG when given ``path``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .errors import ConfigError

DPI = 100


def _array(m: Any, name: str, ndim: int | None = None) -> np.ndarray:
    if hasattr(m, "detach"):
        m = m.detach().float().cpu().numpy()
    array = np.asarray(m, dtype=np.float64)
    if ndim is not None and array.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    return array


def _square(m: Any, name: str) -> np.ndarray:
    array = _array(m, name, 2)
    if array.shape[0] != array.shape[1]:
        raise ConfigError(f"{name} must be a square [F, F] frame map, got shape {array.shape}")
    return array


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    return fig


def _frame_ticks(ax, n: int, reference_frames: Sequence[int]) -> None:
    step = max(1, n // 16)
    ticks = list(range(0, n, step))
    labels = [f"{i} (ref)" if i in reference_frames else str(i) for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90 if n > 8 else 0)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("key frame")
    ax.set_ylabel("query frame")
    for r in reference_frames:
        ax.add_patch(Rectangle((r - 0.5, -0.5), 1, n, fill=False, edgecolor="white", linewidth=1.5, linestyle="--"))


def _annotate(ax, m: np.ndarray, fmt: str = "{:.2f}") -> None:
    if m.shape[0] > 8:
        return
    mid = (np.nanmax(m) + np.nanmin(m)) / 2
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                    color="black" if m[i, j] > mid else "white")


def plot_frame_map(
    m: Any, path: str | Path | None = None, *, reference_frames: Sequence[int] = (0,), title: str | None = None,
    vmin: float | None = None, vmax: float | None = None,
) -> Figure:
    """Heatmap of an [F, F] frame map: query frame (rows) -> key frame (columns), reference marked."""
    m = _square(m, "frame map")
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap="viridis", vmin=vmin if vmin is not None else 0.0, vmax=vmax)
    _frame_ticks(ax, m.shape[0], reference_frames)
    _annotate(ax, m)
    fig.colorbar(image, ax=ax, label="attention mass")
    ax.set_title(title or "frame-to-frame attention", fontsize=10, wrap=True)
    return _save(fig, path)


def plot_frame_map_diff(
    a: Any, b: Any = None, path: str | Path | None = None, *, title: str | None = None,
    labels: tuple[str, str] = ("steered", "vanilla"), reference_frames: Sequence[int] = (0,),
) -> Figure:
    """``a - b`` (or ``a`` already a difference) with a diverging colour map centred at 0."""
    diff = _square(a, "a") - (0.0 if b is None else _square(b, "b"))
    limit = float(np.nanmax(np.abs(diff))) or 1e-12
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(diff, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit))
    _frame_ticks(ax, diff.shape[0], reference_frames)
    _annotate(ax, diff, "{:+.3f}")
    fig.colorbar(image, ax=ax, label="Δ attention mass")
    ax.set_title(title or (f"{labels[0]} minus {labels[1]}" if b is not None else "difference"), fontsize=10, wrap=True)
    return _save(fig, path)


def plot_reference_mass(
    curves: Mapping[str, Any], path: str | Path | None = None, *, xlabel: str = "denoising step",
    ylabel: str = "mass on reference frame", title: str | None = None,
) -> Figure:
    """Several curves on one axis: ``label -> y`` or ``label -> (x, y)`` (e.g. one per gamma)."""
    if not curves:
        raise ConfigError("curves must hold at least one label -> values entry")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, values in curves.items():
        if isinstance(values, tuple) and len(values) == 2:
            x, y = np.asarray(values[0]), _array(values[1], f"curve {label!r}", 1)
        else:
            y = _array(values, f"curve {label!r}", 1)
            x = np.arange(len(y))
        ax.plot(x, y, marker="o", label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_frame_map_grid(
    maps: Mapping[str, Any], path: str | Path | None = None, *, ncols: int = 4,
    reference_frames: Sequence[int] = (0,), title: str | None = None,
) -> Figure:
    """Frame maps side by side (e.g. one per step) with one shared colour scale."""
    if not maps:
        raise ConfigError("maps must hold at least one title -> frame map entry")
    arrays = {name: _square(m, f"map {name!r}") for name, m in maps.items()}
    vmax = max(float(np.nanmax(a)) for a in arrays.values())
    ncols = min(ncols, len(arrays))
    nrows = -(-len(arrays) // ncols)
    fig = Figure(figsize=(3.2 * ncols + 0.8, 3.0 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (name, m) in zip(axes, arrays.items()):
        image = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax)
        _frame_ticks(ax, m.shape[0], reference_frames)
        ax.set_title(name, fontsize=9)
    for ax in axes[len(arrays):]:
        ax.axis("off")
    fig.colorbar(image, ax=list(axes), label="attention mass", shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def contact_sheet(videos: Mapping[str, Any], path: str | Path | None = None, *, max_frames: int = 8) -> Figure:
    """One row per video, evenly sampled frames, row labels on the left and frame indices on top."""
    from .videoio import as_frames

    if not videos:
        raise ConfigError("videos must hold at least one label -> video entry")
    rows = {label: as_frames(v) for label, v in videos.items()}
    length = max(len(v) for v in rows.values())
    picks = np.unique(np.linspace(0, length - 1, min(max_frames, length)).round().astype(int))
    fig = Figure(figsize=(1.3 * len(picks) + 0.9, 1.3 * len(rows) + 0.3), layout="constrained")
    axes = np.array(fig.subplots(len(rows), len(picks), squeeze=False))
    for r, (label, frames) in enumerate(rows.items()):
        for c, t in enumerate(picks):
            ax = axes[r, c]
            ax.imshow(frames[min(t, len(frames) - 1)])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[r, 0].set_ylabel(str(label), fontsize=9)
    return _save(fig, path)


def plot_metrics(
    xs: Sequence[float], series: Mapping[str, Sequence[float]], path: str | Path | None = None, *,
    xlabel: str = "gamma", title: str | None = None,
) -> Figure:
    """Several metrics against one x (e.g. motion and fidelity against gamma), one panel each."""
    if not series:
        raise ConfigError("series must hold at least one metric name -> values entry")
    fig = Figure(figsize=(3.4 * len(series), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(series)))
    for ax, (name, values) in zip(axes, series.items()):
        y = _array(values, f"series {name!r}", 1)
        if len(y) != len(xs):
            raise ConfigError(f"series {name!r} has {len(y)} values for {len(xs)} x values")
        ax.plot(xs, y, marker="o")
        ax.set_xlabel(xlabel)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
