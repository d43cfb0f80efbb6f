"""Pictures of spatial attention maps: heatmaps on the decoded video frames.

A :class:`~attnsteer.inspection.map_recording.Heatmap` holds one value per token; its [F, rows, cols] video
part is upsampled from the token grid to the frame's pixels and drawn in colour over the video
frame (in grey) that each latent frame stands for (``latent_frame_of``); a region map's query
tokens are outlined. Figures use one colour scale with one colour
bar and name the map, steps, layers and branch; ``save_heatmap_video`` writes the overlay through
the whole video as .gif or .mp4 (through :func:`attnsteer.figures.videoio.save_video`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ..errors import ConfigError
from ..inspection.map_recording import Heatmap
from .videoio import as_frames, save_video
from .viz import save_figure, spread_frames

CMAP = "inferno"
INTERPOLATIONS = ("bilinear", "nearest")


def latent_frame_of(t: int, num_video_frames: int, num_latent_frames: int) -> int:
    """The latent frame that video frame ``t`` belongs to: the identity when the counts match; with
    temporal compression r (``T = r (F - 1) + 1``, Wan, CogVideoX, HunyuanVideo, LTX) frame 0 alone and
    then r frames per latent frame; otherwise the nearest in proportion."""
    if num_latent_frames == 1:
        return 0
    if num_video_frames == num_latent_frames:
        return t
    ratio, rest = divmod(num_video_frames - 1, num_latent_frames - 1)
    if rest == 0:
        return -(-t // ratio)
    return round(t * (num_latent_frames - 1) / (num_video_frames - 1))


def video_frame_of(f: int, num_video_frames: int, num_latent_frames: int) -> int:
    """The video frame drawn for latent frame ``f``: the middle one of the frames it covers."""
    covered = [t for t in range(num_video_frames) if latent_frame_of(t, num_video_frames, num_latent_frames) == f]
    if not covered:
        raise ConfigError(f"latent frame {f} covers no video frame ({num_video_frames} video, {num_latent_frames} latent)")
    return covered[len(covered) // 2]


def _check_heatmaps(rows: Mapping[str, Heatmap] | Heatmap) -> dict[str, Heatmap]:
    if isinstance(rows, Heatmap):
        rows = {rows.steps: rows}
    if not isinstance(rows, Mapping) or not rows or not all(isinstance(h, Heatmap) for h in rows.values()):
        raise ConfigError("heatmaps must be a Heatmap (rec.maps.heatmap(...)) or a non-empty mapping label -> Heatmap")
    shapes = {tuple(h.frames.shape) for h in rows.values()}
    if len(shapes) > 1:
        raise ConfigError(f"heatmaps in one figure must share their token grid, got shapes {sorted(shapes)}")
    if len({h.axis for h in rows.values()}) > 1:
        raise ConfigError("one figure has one colour scale: draw per-query maps (at.maps.onto) and per-key maps "
                          "(at.maps.region, at.maps.received) in separate figures")
    return dict(rows)


def _check_style(alpha: float, interpolation: str) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def _common(values: Sequence[str]) -> str | None:
    return values[0] if len(set(values)) == 1 else None


def _draw(ax: Any, frame: np.ndarray | None, grid: np.ndarray, vmax: float, alpha: float, interpolation: str,
          outline: np.ndarray | None = None) -> Any:
    """One cell: the video frame in grey (if any) with the token grid stretched over its pixels in colour,
    and ``outline`` (bool [rows, cols], a region map's query tokens) traced in cyan."""
    if frame is not None:
        h, w = frame.shape[:2]
        grey = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
        ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, extent=(0, w, h, 0))
    else:
        h, w = grid.shape
        alpha = 1.0
    image = ax.imshow(grid, cmap=CMAP, vmin=0.0, vmax=vmax, alpha=alpha, extent=(0, w, h, 0),
                      interpolation=interpolation)
    if outline is not None and outline.any() and not outline.all():  # a whole frame (received) is not outlined
        ax.add_collection(LineCollection(_cell_edges(outline, w, h), colors="cyan", linewidths=1.5))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def plot_heatmap_grid(
    heatmaps: Mapping[str, Heatmap] | Heatmap, path: str | Path | None = None, *, video: Any = None,
    frames: Sequence[int] | None = None, max_frames: int = 6, title: str | None = None, vmax: float | None = None,
    alpha: float = 0.6, interpolation: str = "bilinear",
) -> Figure:
    """A grid of heatmaps: one row per entry of ``heatmaps`` (label -> Heatmap, e.g. by step range or by
    word), one column per latent frame (``frames``, default up to ``max_frames`` spread over the video
    and those holding a region map's queries),
    drawn over the decoded ``video`` when given (one for all rows, or label -> video), on one colour
    scale (0 .. ``vmax``, default the largest value shown) with one colour bar. The title names what
    the rows share (map, steps, layers, branch)."""
    rows = _check_heatmaps(heatmaps)
    _check_style(alpha, interpolation)
    first = next(iter(rows.values()))
    num_latent = first.frames.shape[0]
    outlines = {label: _outline(h) for label, h in rows.items()}
    if frames is None:  # spread over the video, plus the frames that hold a region map's queries
        marked = {int(f) for o in outlines.values() if o is not None and not o.all()
                  for f in np.nonzero(o.any((1, 2)))[0]}
        chosen = sorted(set(spread_frames(num_latent, max_frames)) | marked)
    else:
        chosen = [int(f) for f in frames]
    bad = [f for f in chosen if not 0 <= f < num_latent]
    if bad or not chosen:
        raise ConfigError(f"frames must be latent frame indices in [0, {num_latent}), got {frames!r}")
    videos = _videos(video, rows)
    grids = {label: h.frames.numpy() for label, h in rows.items()}
    vmax = float(max(g[chosen].max() for g in grids.values())) if vmax is None else float(vmax)
    some = next(iter(videos.values()))
    aspect = first.frames.shape[2] / first.frames.shape[1] if some is None else some.shape[2] / some.shape[1]
    cell = 1.7
    fig = Figure(figsize=(cell * min(max(aspect, 0.6), 2.0) * len(chosen) + 1.6, cell * len(rows) + 0.9),
                 layout="constrained")
    fig.get_layout_engine().set(w_pad=0.1)  # room for the row labels at the left edge
    axes = fig.subplots(len(rows), len(chosen), squeeze=False)
    image = None
    for r, (label, grid) in enumerate(grids.items()):
        pictures = videos[label]
        for c, f in enumerate(chosen):
            t = None if pictures is None else video_frame_of(f, len(pictures), num_latent)
            outline = None if outlines[label] is None else outlines[label][f]
            image = _draw(axes[r, c], None if t is None else pictures[t], grid[f], vmax, alpha, interpolation, outline)
            if r == 0:
                axes[r, c].set_title(f"latent frame {f}" + ("" if t is None else f"\n(video frame {t})"), fontsize=8)
        axes[r, 0].set_ylabel(str(label), fontsize=9)
    fig.colorbar(image, ax=list(axes.ravel()), shrink=0.85, label=_units(first))
    fig.suptitle(title or _title(list(rows.values())), fontsize=10)
    return save_figure(fig, path)


def _cell_edges(cells: np.ndarray, w: float, h: float) -> list[list[tuple[float, float]]]:
    """The edges between marked and unmarked token cells (a region's outline), in pixels."""
    rows, cols = cells.shape
    padded = np.pad(cells, 1)
    cw, ch = w / cols, h / rows
    edges = []
    for r, c in zip(*np.nonzero(cells)):
        if not padded[r, c + 1]:
            edges.append([(c * cw, r * ch), ((c + 1) * cw, r * ch)])
        if not padded[r + 2, c + 1]:
            edges.append([(c * cw, (r + 1) * ch), ((c + 1) * cw, (r + 1) * ch)])
        if not padded[r + 1, c]:
            edges.append([(c * cw, r * ch), (c * cw, (r + 1) * ch)])
        if not padded[r + 1, c + 2]:
            edges.append([((c + 1) * cw, r * ch), ((c + 1) * cw, (r + 1) * ch)])
    return edges


def _outline(h: Heatmap) -> np.ndarray | None:
    """bool [F, rows, cols]: a region map's query tokens on the grid (None for other maps)."""
    if h.queries is None:
        return None
    video = h.queries[h.layout.video_start : h.layout.video_end]
    return video.reshape(h.frames.shape).numpy()


def _videos(video: Any, rows: Mapping[str, Heatmap]) -> dict[str, np.ndarray | None]:
    """The decoded video of each row: one for all rows, or a mapping with the rows' labels."""
    if isinstance(video, Mapping):
        missing = [label for label in rows if label not in video]
        if missing:
            raise ConfigError(f"video has no entry for the rows {missing}; give one video, or one per row label")
        return {label: as_frames(video[label], f"video[{label!r}]") for label in rows}
    pictures = None if video is None else as_frames(video)
    return {label: pictures for label in rows}


def _units(h: Heatmap) -> str:
    return "attention mass of the query" if h.axis == "query" else "mean attention weight on the key"


def _title(maps: list[Heatmap]) -> str:
    """What every row shares: map, steps, layers, branch."""
    parts = [_common([h.label for h in maps]), _common([h.steps for h in maps]), _common([h.layers for h in maps])]
    branch = _common([h.branch for h in maps])
    parts.append(None if branch is None else f"{branch} branch")
    return ", ".join(p for p in parts if p) or "spatial attention maps"


def heatmaps_by_step(maps: Any, map: Any, layers: Any = None, branch: str | None = None) -> dict[str, Heatmap]:
    """One heatmap per recorded step bin of ``maps`` (a MapRecording), for :func:`plot_heatmap_grid`."""
    return {bin_label: maps.heatmap(map, steps=bin_label, layers=layers, branch=branch)
            for bin_label in maps.step_bin_labels}


def save_heatmap_video(
    heatmap: Heatmap, video: Any, path: str | Path, *, fps: float = 8, vmax: float | None = None, alpha: float = 0.6,
    interpolation: str = "bilinear",
) -> Path:
    """An animated .gif or .mp4 of ``heatmap`` over every frame of ``video`` (each video frame shows its
    latent frame's map), with the map's title and a colour bar on one scale for the whole video."""
    if not isinstance(heatmap, Heatmap):
        raise ConfigError(f"heatmap must be a Heatmap (rec.maps.heatmap(...)), got {type(heatmap).__name__}")
    _check_style(alpha, interpolation)
    pictures = as_frames(video)
    grid = heatmap.frames.numpy()
    outline = _outline(heatmap)
    vmax = float(grid.max()) if vmax is None else float(vmax)
    h, w = pictures.shape[1:3]
    fig = Figure(figsize=(min(max(w / h, 0.6), 2.0) * 3.2 + 1.2, 3.6), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rendered = []
    for t, picture in enumerate(pictures):
        ax.clear()
        f = latent_frame_of(t, len(pictures), grid.shape[0])
        image = _draw(ax, picture, grid[f], vmax, alpha, interpolation, None if outline is None else outline[f])
        ax.set_title(f"video frame {t} (latent frame {f})", fontsize=8)
        if t == 0:
            fig.colorbar(image, ax=ax, shrink=0.85, label=_units(heatmap))
            fig.suptitle(heatmap.title, fontsize=8, wrap=True)
        canvas.draw()
        rendered.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return save_video(np.stack(rendered), path, fps=fps)


__all__ = ["heatmaps_by_step", "latent_frame_of", "plot_heatmap_grid", "save_heatmap_video", "video_frame_of"]
