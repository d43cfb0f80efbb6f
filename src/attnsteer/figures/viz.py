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
from matplotlib.ticker import MaxNLocator

from ..errors import ConfigError
from .videoio import as_frames

DPI = 100
ANNOTATE_UP_TO = 12  # frame maps with at most this many frames get their values written in the cells
MAP_SIZE = (5.2, 4.4)
CELL_INCHES = 0.5  # frame maps grow past MAP_SIZE so that annotated cells stay this large
CELL_FONT = 8  # points: the values written in frame-map cells (11 px at DPI 100)
TITLE_FONT = 10


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


def _mapping(value: Any, name: str, example: str) -> Mapping[str, Any]:
    """``value`` if it is a non-empty mapping, else an error naming the argument and showing its form."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping {example}, got {type(value).__name__}")
    if not value:
        raise ConfigError(f"{name} must hold at least one entry {example}")
    return value


def _path(path: Any, name: str = "path") -> Path | None:
    if path is not None and not isinstance(path, (str, Path)):
        raise ConfigError(f"{name} must be a file path (str or pathlib.Path) or None, got {type(path).__name__}")
    return None if path is None else Path(path)


def _square(m: Any, name: str) -> np.ndarray:
    array = _array(m, name, 2)
    if array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ConfigError(f"{name} must be a square [F, F] frame map, got shape {array.shape}")
    return array


def _references(reference_frames: int | Sequence[int], n: int) -> list[int]:
    """Reference frame indices in 0..n-1 (negatives count from the end); one int or a sequence of ints."""
    if isinstance(reference_frames, (int, np.integer)):
        reference_frames = (reference_frames,)
    if not isinstance(reference_frames, Sequence) or not all(
            isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in reference_frames):
        raise ConfigError(f"reference_frames must be a frame index or a sequence of them, got {reference_frames!r}")
    refs = []
    for r in reference_frames:
        if not -n <= int(r) < n:
            raise ConfigError(f"reference_frames must be frame indices in [-{n}, {n}), got {r!r}")
        refs.append(int(r) % n)
    return sorted(set(refs))


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Write ``fig`` as a PNG at ``path`` (its folder made) unless ``path`` is None; returns ``fig``."""
    path = _path(path)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    return fig


def _map_size(n: int) -> tuple[float, float]:
    """Figure size of one frame map: MAP_SIZE, larger when annotated cells would be smaller than CELL_INCHES."""
    grow = max(1.0, CELL_INCHES * min(n, ANNOTATE_UP_TO) / 3.4)
    return MAP_SIZE[0] * grow, MAP_SIZE[1] * grow


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
        ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=CELL_FONT,
                color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")


def plot_frame_map(
    m: Any, path: str | Path | None = None, *, reference_frames: Sequence[int] = (0,), title: str | None = None,
    vmin: float | None = None, vmax: float | None = None,
) -> Figure:
    """Heatmap of an [F, F] frame map: query frame (rows) -> key frame (columns), reference frames outlined."""
    m = _square(m, "m")
    fig = Figure(figsize=_map_size(m.shape[0]), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap="viridis", vmin=0.0 if vmin is None else vmin, vmax=vmax)
    _frame_axes(ax, m.shape[0], _references(reference_frames, m.shape[0]))
    _annotate(ax, image, m, "{:.2f}")
    fig.colorbar(image, ax=ax, label="attention mass")
    ax.set_title(title or "frame-to-frame attention", fontsize=TITLE_FONT, wrap=True)
    return save_figure(fig, path)


def plot_frame_map_diff(
    a: Any, b: Any = None, path: str | Path | None = None, *, title: str | None = None,
    labels: tuple[str, str] = ("steered", "vanilla"), reference_frames: Sequence[int] = (0,),
) -> Figure:
    """``a - b`` (or ``a`` already a difference) on a diverging colour map with limits symmetric about 0."""
    if isinstance(b, (str, Path)):
        raise ConfigError("b is a file path; pass the second frame map as b and the path as path "
                          "(plot_frame_map_diff(a, b, path)), or path=... when a is already a difference")
    diff = _square(a, "a")
    if b is not None:
        other = _square(b, "b")
        if other.shape != diff.shape:
            raise ConfigError(f"a and b must have the same shape, got {diff.shape} and {other.shape}")
        diff = diff - other
    limit = float(np.nanmax(np.abs(diff))) or 1e-12
    fig = Figure(figsize=_map_size(diff.shape[0]), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(diff, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit))
    _frame_axes(ax, diff.shape[0], _references(reference_frames, diff.shape[0]))
    _annotate(ax, image, diff, "{:+.3f}")
    fig.colorbar(image, ax=ax, label="Δ attention mass")
    ax.set_title(title or (f"{labels[0]} minus {labels[1]}" if b is not None else "difference"), fontsize=TITLE_FONT,
                 wrap=True)
    return save_figure(fig, path)


def plot_reference_mass(
    curves: Mapping[str, Any], path: str | Path | None = None, *, xlabel: str = "denoising step",
    ylabel: str = "mass on reference frame", title: str | None = None, legend_title: str | None = None,
    shade: tuple[float, float] | None = None,
) -> Figure:
    """Several curves on one axis, e.g. one per gamma: ``label -> y`` (x = 0, 1, ...) or ``label -> (x, y)``,
    which is what ``Record.reference_mass`` returns. Integer x values get integer ticks; ``shade``
    (first, last) marks a span of x, e.g. the steered steps."""
    curves = _mapping(curves, "curves", "label -> values or (x, y), e.g. {'vanilla': rec.reference_mass(by='step')}")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    integral = True
    for label, values in curves.items():
        name = f"curves[{label!r}]"
        if isinstance(values, tuple) and len(values) == 2 and all(np.ndim(v) == 1 for v in values):
            x, y = _array(values[0], f"{name} x", 1), _array(values[1], f"{name} y", 1)
            if len(x) != len(y):
                raise ConfigError(f"{name} has {len(x)} x values and {len(y)} y values")
        else:
            y = _array(values, name, 1)
            x = np.arange(len(y))
        integral &= bool(np.all(x == np.round(x)))
        ax.plot(x, y, marker="o", label=str(label))
    if integral:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if shade is not None:
        if len(shade) != 2 or not all(np.isfinite(float(v)) for v in shade):
            raise ConfigError(f"shade must be (first, last) x values, got {shade!r}")
        ax.axvspan(float(shade[0]) - 0.5 * integral, float(shade[1]) + 0.5 * integral, color="0.85", zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=legend_title, title_fontsize=8)
    if title:
        ax.set_title(title, fontsize=TITLE_FONT, wrap=True)
    return save_figure(fig, path)


def plot_frame_map_grid(
    maps: Mapping[str, Any], path: str | Path | None = None, *, ncols: int = 4,
    reference_frames: Sequence[int] = (0,), title: str | None = None,
) -> Figure:
    """Frame maps side by side (e.g. one per step) on one shared colour scale with one colour bar."""
    maps = _mapping(maps, "maps", "title -> [F, F] frame map, e.g. {'step 0': rec.frame_map(steps=[0])}")
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ConfigError(f"ncols must be >= 1, got {ncols!r}")
    arrays = {name: _square(m, f"maps[{name!r}]") for name, m in maps.items()}
    vmax = max(float(np.nanmax(a)) for a in arrays.values())
    ncols = min(ncols, len(arrays))
    nrows = -(-len(arrays) // ncols)
    fig = Figure(figsize=(3.2 * ncols + 1.0, 3.0 * nrows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (name, m) in zip(axes, arrays.items()):
        image = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax)
        _frame_axes(ax, m.shape[0], _references(reference_frames, m.shape[0]), max_ticks=8)
        ax.set_title(str(name), fontsize=9)
    for ax in axes[len(arrays):]:
        ax.axis("off")
    fig.colorbar(image, ax=list(axes[: len(arrays)]), label="attention mass", shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=TITLE_FONT, wrap=True)
    return save_figure(fig, path)


def contact_sheet(
    videos: Mapping[str, Any], path: str | Path | None = None, *, max_frames: int = 9, title: str | None = None,
) -> Figure:
    """One row per video (anything ``videoio.as_frames`` takes, all of one frame size): up to ``max_frames``
    evenly sampled frames (first and last included; every frame when there are no more), row labels on
    the left, frame indices on top. Drawn as one image, so it stays fast for many rows."""
    videos = _mapping(videos, "videos", "label -> video [T, H, W, 3], e.g. {'vanilla': frames}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise ConfigError(f"max_frames must be an int >= 1, got {max_frames!r}")
    rows = {label: as_frames(v, f"videos[{label!r}]") for label, v in videos.items()}
    sizes = {frames.shape[1:3] for frames in rows.values()}
    if len(sizes) > 1:
        raise ConfigError(f"videos must share one frame size, got {sorted(sizes)}")
    (h, w), gap = sizes.pop(), 2
    ncols = max(len(spread_frames(len(frames), max_frames)) for frames in rows.values())
    longest = max(rows.values(), key=len)
    picks = spread_frames(len(longest), max_frames)
    mosaic = np.full((len(rows) * (h + gap) - gap, ncols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, frames in enumerate(rows.values()):
        for c, t in enumerate(spread_frames(len(frames), max_frames)):
            mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = frames[t]
    cell = 1.3
    fig = Figure(figsize=(cell * min(max(w / h, 0.5), 2.0) * ncols + 1.2, cell * len(rows) + 0.5 + 0.4 * bool(title)),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([c * (w + gap) + w / 2 for c in range(len(picks))], [f"t={t}" for t in picks], fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(rows))], [str(label) for label in rows], fontsize=10)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=TITLE_FONT, wrap=True, pad=18)
    return save_figure(fig, path)


def spread_frames(length: int, count: int) -> list[int]:
    """Up to ``count`` frame indices spread evenly over ``length`` frames, first and last included."""
    return sorted(set(np.linspace(0, length - 1, min(count, length)).round().astype(int).tolist()))


def plot_metrics(
    xs: Sequence[float], series: Mapping[str, Sequence[float]], path: str | Path | None = None, *,
    xlabel: str = "gamma", title: str | None = None, ncols: int = 3, targets: Mapping[str, float] | None = None,
) -> Figure:
    """Several metrics against one x (e.g. motion and fidelity against gamma), one small panel each,
    ``ncols`` panels to a row; ``targets`` draws a dashed line at a metric's ideal value (``name -> y``).

    Non-finite values (the inf PSNR of an unchanged frame) are left out of the line.
    """
    series = _mapping(series, "series", "metric name -> one value per x, e.g. {'flow': [0.4, 0.7, 0.8]}")
    targets = {} if targets is None else _mapping(targets, "targets", "metric name -> ideal value")
    unknown = [name for name in targets if name not in series]
    if unknown:
        raise ConfigError(f"targets name metrics that are not in series: {unknown}; series has {list(series)}")
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ConfigError(f"ncols must be an int >= 1, got {ncols!r}")
    x = _array(xs, "xs", 1)
    ncols = min(ncols, len(series))
    nrows = -(-len(series) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows + 0.4 * bool(title)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (name, values) in zip(axes, series.items()):
        y = _array(values, f"series[{name!r}]", 1)
        if len(y) != len(x):
            raise ConfigError(f"series[{name!r}] has {len(y)} values for {len(x)} xs")
        finite = np.isfinite(y)
        ax.plot(x[finite], y[finite], marker="o")
        if name in targets:
            ax.axhline(float(targets[name]), color="0.4", linestyle="--", linewidth=1, label="target")
            ax.legend(fontsize=8)
        ax.set_xlabel(xlabel)
        if len(x) <= 12:
            ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.set_title(str(name), fontsize=TITLE_FONT)
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=TITLE_FONT, wrap=True)
    return save_figure(fig, path)
