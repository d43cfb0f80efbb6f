"""Figures of frame-level attention and of videos (matplotlib, no display needed).

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot, no global backend),
returns it, and writes a PNG of ``figsize * DPI`` pixels when given ``path``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from .errors import ConfigError
from .videoio import as_frames

DPI = 100
ANNOTATE_UP_TO = 12  # frame maps with at most this many frames get their values written in the cells
MAP_SIZE = (5.2, 4.4)


def _array(values: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """A float numpy array from a torch tensor, an array or nested sequences."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be numbers (a tensor, an array or a sequence), "
                          f"got {type(values).__name__}") from None
    if ndim is not None and array.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    return array


def _square(m: Any, name: str) -> np.ndarray:
    array = _array(m, name, 2)
    if array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ConfigError(f"{name} must be a square [F, F] frame map, got shape {array.shape}")
    return array


def _references(reference_frames: Sequence[int], n: int) -> list[int]:
    """Reference frame indices in 0..n-1 (negatives count from the end)."""
    refs = []
    for r in reference_frames:
        if not -n <= int(r) < n:
            raise ConfigError(f"reference_frames must be frame indices in [-{n}, {n}), got {r!r}")
        refs.append(int(r) % n)
    return sorted(set(refs))


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    return fig


def _frame_axes(ax: Axes, n: int, refs: Sequence[int], max_ticks: int = 12) -> None:
    """Integer frame ticks (reference frames always shown, as 'i (ref)'), axis labels, reference columns outlined."""
    ticks = sorted(set(range(0, n, -(-n // max_ticks))) | set(refs))
    labels = [f"{i} (ref)" if i in refs else str(i) for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90 if n > 8 else 0)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("key frame")
    ax.set_ylabel("query frame")
    for r in refs:
        ax.add_patch(Rectangle((r - 0.5, -0.5), 1, n, fill=False, edgecolor="black", linewidth=2))
        ax.add_patch(Rectangle((r - 0.5, -0.5), 1, n, fill=False, edgecolor="white", linewidth=1, linestyle="--"))


def _annotate(ax: Axes, image: AxesImage, m: np.ndarray, fmt: str) -> None:
    """Write each cell's value, dark on light colours and light on dark ones."""
    n = m.shape[0]
    if n > ANNOTATE_UP_TO:
        return
    for (i, j), value in np.ndenumerate(m):
        r, g, b, _ = image.cmap(image.norm(value))
        ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7 if n <= 8 else 5,
                color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")


def plot_frame_map(
    m: Any, path: str | Path | None = None, *, reference_frames: Sequence[int] = (0,), title: str | None = None,
    vmin: float | None = None, vmax: float | None = None,
) -> Figure:
    """Heatmap of an [F, F] frame map: query frame (rows) -> key frame (columns), reference frames outlined."""
    m = _square(m, "m")
    fig = Figure(figsize=MAP_SIZE, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap="viridis", vmin=0.0 if vmin is None else vmin, vmax=vmax)
    _frame_axes(ax, m.shape[0], _references(reference_frames, m.shape[0]))
    _annotate(ax, image, m, "{:.2f}")
    fig.colorbar(image, ax=ax, label="attention mass")
    ax.set_title(title or "frame-to-frame attention", fontsize=10, wrap=True)
    return _save(fig, path)


def plot_frame_map_diff(
    a: Any, b: Any = None, path: str | Path | None = None, *, title: str | None = None,
    labels: tuple[str, str] = ("steered", "vanilla"), reference_frames: Sequence[int] = (0,),
) -> Figure:
    """``a - b`` (or ``a`` already a difference) on a diverging colour map with limits symmetric about 0."""
    diff = _square(a, "a")
    if b is not None:
        other = _square(b, "b")
        if other.shape != diff.shape:
            raise ConfigError(f"a and b must have the same shape, got {diff.shape} and {other.shape}")
        diff = diff - other
    limit = float(np.nanmax(np.abs(diff))) or 1e-12
    fig = Figure(figsize=MAP_SIZE, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(diff, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit))
    _frame_axes(ax, diff.shape[0], _references(reference_frames, diff.shape[0]))
    _annotate(ax, image, diff, "{:+.3f}")
    fig.colorbar(image, ax=ax, label="Δ attention mass")
    ax.set_title(title or (f"{labels[0]} minus {labels[1]}" if b is not None else "difference"), fontsize=10, wrap=True)
    return _save(fig, path)


def plot_reference_mass(
    curves: Mapping[str, Any], path: str | Path | None = None, *, xlabel: str = "denoising step",
    ylabel: str = "mass on reference frame", title: str | None = None,
) -> Figure:
    """Several curves on one axis, e.g. one per gamma: ``label -> y`` (x = 0, 1, ...) or ``label -> (x, y)``."""
    if not curves:
        raise ConfigError("curves must hold at least one label -> values entry")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, values in curves.items():
        name = f"curves[{label!r}]"
        if isinstance(values, tuple) and len(values) == 2 and all(np.ndim(v) == 1 for v in values):
            x, y = _array(values[0], f"{name} x", 1), _array(values[1], f"{name} y", 1)
            if len(x) != len(y):
                raise ConfigError(f"{name} has {len(x)} x values and {len(y)} y values")
        else:
            y = _array(values, name, 1)
            x = np.arange(len(y))
        ax.plot(x, y, marker="o", label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10, wrap=True)
    return _save(fig, path)


def plot_frame_map_grid(
    maps: Mapping[str, Any], path: str | Path | None = None, *, ncols: int = 4,
    reference_frames: Sequence[int] = (0,), title: str | None = None,
) -> Figure:
    """Frame maps side by side (e.g. one per step) on one shared colour scale with one colour bar."""
    if not maps:
        raise ConfigError("maps must hold at least one title -> frame map entry")
    if ncols < 1:
        raise ConfigError(f"ncols must be >= 1, got {ncols!r}")
    arrays = {name: _square(m, f"maps[{name!r}]") for name, m in maps.items()}
    vmax = max(float(np.nanmax(a)) for a in arrays.values())
    ncols = min(ncols, len(arrays))
    nrows = -(-len(arrays) // ncols)
    fig = Figure(figsize=(3.2 * ncols + 0.8, 3.0 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (name, m) in zip(axes, arrays.items()):
        image = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax)
        _frame_axes(ax, m.shape[0], _references(reference_frames, m.shape[0]), max_ticks=8)
        ax.set_title(str(name), fontsize=9)
    for ax in axes[len(arrays):]:
        ax.axis("off")
    fig.colorbar(image, ax=list(axes), label="attention mass", shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def contact_sheet(videos: Mapping[str, Any], path: str | Path | None = None, *, max_frames: int = 8) -> Figure:
    """One row per video (anything ``videoio.as_frames`` takes): evenly sampled frames, labels left, indices on top."""
    if not videos:
        raise ConfigError("videos must hold at least one label -> video entry")
    if max_frames < 1:
        raise ConfigError(f"max_frames must be >= 1, got {max_frames!r}")
    rows = {label: as_frames(v, f"videos[{label!r}]") for label, v in videos.items()}
    picks = {label: _even(len(frames), max_frames) for label, frames in rows.items()}
    shared = len({tuple(p) for p in picks.values()}) == 1  # then frame indices only above the first row
    ncols = max(len(p) for p in picks.values())
    h, w = next(iter(rows.values())).shape[1:3]
    cell = 1.3
    fig = Figure(figsize=(cell * min(max(w / h, 0.5), 2.0) * ncols + 0.9, cell * len(rows) + 0.3),
                 layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (label, frames) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(picks[label]):
                ax.axis("off")
                continue
            t = picks[label][c]
            ax.imshow(frames[t])
            if r == 0 or not shared:
                ax.set_title(f"t={t}", fontsize=8)
        axes[r, 0].set_ylabel(str(label), fontsize=9)
    return _save(fig, path)


def _even(length: int, count: int) -> list[int]:
    """Up to ``count`` frame indices spread evenly over ``length`` frames, first and last included."""
    return sorted(set(np.linspace(0, length - 1, min(count, length)).round().astype(int).tolist()))


def plot_metrics(
    xs: Sequence[float], series: Mapping[str, Sequence[float]], path: str | Path | None = None, *,
    xlabel: str = "gamma", title: str | None = None,
) -> Figure:
    """Several metrics against one x (e.g. motion and fidelity against gamma), one small panel each.

    Non-finite values (the inf PSNR of an unchanged frame) are left out of the line.
    """
    if not series:
        raise ConfigError("series must hold at least one metric name -> values entry")
    x = _array(xs, "xs", 1)
    fig = Figure(figsize=(3.4 * len(series), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(series)))
    for ax, (name, values) in zip(axes, series.items()):
        y = _array(values, f"series[{name!r}]", 1)
        if len(y) != len(x):
            raise ConfigError(f"series[{name!r}] has {len(y)} values for {len(x)} xs")
        finite = np.isfinite(y)
        ax.plot(x[finite], y[finite], marker="o")
        ax.set_xlabel(xlabel)
        ax.set_title(str(name), fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
