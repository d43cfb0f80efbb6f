"""Token geometry: where each token of a call sits (frame, row, column) and spatial selectors.

Adapters report the (rows, cols) token grid of a frame in ``TokenLayout.grid``. Spatial selectors
are written in fractions of the frame (x to the right, y down, both in [0, 1]), so one rule fits
every resolution. A token covers the cell ``[c/cols, (c+1)/cols) x [r/rows, (r+1)/rows)``:

- boxes and points select the tokens whose cell *centre* lies inside (``x0 <= cx < x1``);
- pixel masks are averaged over each token's cell and select the tokens at least half covered.

Only frame tokens are selected (not text, nor segments tied to a frame). A region that selects no
token on the call's grid raises, rather than silently selecting nothing.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence

import attrs
import torch

from ..errors import ConfigError
from ..validation import real_number
from .layout import TokenLayout
from .selectors import FrameIndex, FrameSlice, SelectionContext, Selector, Video

Box4 = tuple[float, float, float, float]


@attrs.frozen
class TokenGeometry:
    """Per token of a call: latent frame (-1 outside frames; tied segments take their frame),
    row and column in the frame's grid (-1 where there is none)."""

    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor


@functools.lru_cache(maxsize=64)
def token_geometry(layout: TokenLayout) -> TokenGeometry:
    """The (frame, row, col) of every token of ``layout`` (cached per layout)."""
    n = layout.seq_len
    frame = torch.full((n,), -1, dtype=torch.long)
    row = torch.full((n,), -1, dtype=torch.long)
    col = torch.full((n,), -1, dtype=torch.long)
    video = slice(layout.video_start, layout.video_end)
    frame[video] = torch.arange(layout.num_frames).repeat_interleave(layout.tokens_per_frame)
    if layout.grid is not None:
        rows, cols = layout.grid
        cell = torch.arange(layout.tokens_per_frame)
        row[video] = (cell // cols).repeat(layout.num_frames)
        col[video] = (cell % cols).repeat(layout.num_frames)
    for s in layout.segments:
        if s.frame is not None:
            frame[s.start : s.stop] = s.frame
    return TokenGeometry(frame=frame, row=row, col=col)


def _require_grid(selector: Selector, layout: TokenLayout) -> tuple[int, int]:
    if layout.grid is None:
        raise ConfigError(
            f"{selector!r} needs the token grid of a frame, which this model's adapter does not report "
            f"(layout {layout.describe()}); spatial selectors work on models whose adapter sets TokenLayout.grid"
        )
    return layout.grid


def _frames_selector(value: object) -> Selector:
    """``frames=`` of a spatial selector: None (every frame), an index, a slice or a frame selector."""
    if value is None:
        return Video()
    if isinstance(value, slice):
        return FrameSlice(value.start, value.stop, value.step)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return FrameIndex(int(value))
    if isinstance(value, Selector) and value.group_level:
        return value
    raise ConfigError(
        f"frames= must be None (every frame), a latent frame index, a slice or a frame selector such as "
        f"at.frames[1:] or at.frames.generated, got {value!r}"
    )


def _fraction(name: str, value: object) -> float:
    number = real_number(value, name)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{name} must be a fraction of the frame in [0, 1], got {value!r}")
    return number


def _box(name: str, value: object) -> Box4:
    try:
        x0, y0, x1, y1 = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be (x0, y0, x1, y1) in fractions of the frame, got {value!r}") from None
    x0, y0, x1, y1 = (_fraction(f"{name} {n}", v) for n, v in zip(("x0", "y0", "x1", "y1"), (x0, y0, x1, y1)))
    if not (x0 < x1 and y0 < y1):
        raise ConfigError(f"{name} must have x0 < x1 and y0 < y1, got {(x0, y0, x1, y1)}")
    return (x0, y0, x1, y1)


def _centres(grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cx, cy) [rows, cols] of every token cell of one frame, in fractions of the frame."""
    rows, cols = grid
    cy = ((torch.arange(rows, dtype=torch.float64) + 0.5) / rows)[:, None].expand(rows, cols)
    cx = ((torch.arange(cols, dtype=torch.float64) + 0.5) / cols)[None, :].expand(rows, cols)
    return cx, cy


def _inside(box: Box4, grid: tuple[int, int]) -> torch.Tensor:
    cx, cy = _centres(grid)
    x0, y0, x1, y1 = box
    return (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)


class _Spatial(Selector):
    """A region given per latent frame as a [rows, cols] mask; ``frames`` restricts the frames."""

    group_level = False
    frames: Selector

    def frame_region(self, frame: int, ctx: SelectionContext) -> torch.Tensor:
        raise NotImplementedError

    def compute_mask(self, ctx: SelectionContext) -> torch.Tensor:
        layout = ctx.layout
        grid = _require_grid(self, layout)
        chosen = sorted(f for f in self.frames.groups(layout) if f < layout.num_frames)
        mask = torch.zeros(layout.seq_len, dtype=torch.bool)
        for f in chosen:
            region = self.frame_region(f, ctx)
            start = layout.video_start + f * layout.tokens_per_frame
            mask[start : start + layout.tokens_per_frame] = region.reshape(-1)
        if chosen and not bool(mask.any()):
            raise ConfigError(
                f"{self!r} covers no token on this call's {grid[0]}x{grid[1]} token grid (a token is inside when the "
                "centre of its cell is); make the region larger"
            )
        return mask


@attrs.frozen(repr=False)
class Box(_Spatial):
    """``at.box(x0, y0, x1, y1, frames=None)``: the tokens whose cell centre lies in the box, in the chosen frames."""

    x0: float
    y0: float
    x1: float
    y1: float
    frames: Selector = attrs.field(default=None, converter=_frames_selector)

    def __attrs_post_init__(self) -> None:
        box = _box("box", (self.x0, self.y0, self.x1, self.y1))
        for name, v in zip(("x0", "y0", "x1", "y1"), box):
            object.__setattr__(self, name, v)

    @property
    def area(self) -> float:
        """The box's area as a fraction of the frame."""
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def frame_region(self, frame: int, ctx: SelectionContext) -> torch.Tensor:
        return _inside((self.x0, self.y0, self.x1, self.y1), ctx.layout.grid)

    def __repr__(self) -> str:
        where = "" if isinstance(self.frames, Video) else f", frames={self.frames!r}"
        return f"box({self.x0:g}, {self.y0:g}, {self.x1:g}, {self.y1:g}{where})"


def _keyframes(value: object) -> tuple[tuple[float, Box4], ...]:
    try:
        items = [(t, b) for t, b in (value.items() if isinstance(value, dict) else value)]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(
            f"trajectory keyframes must be (t, (x0, y0, x1, y1)) pairs with t in [0, 1], got {value!r}"
        ) from None
    if not items:
        raise ConfigError("trajectory needs at least one keyframe")
    out = tuple((_fraction("trajectory keyframe t", t), _box(f"trajectory box at t={t}", b)) for t, b in items)
    times = [t for t, _ in out]
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ConfigError(f"trajectory keyframe times must increase strictly, got {times}")
    return out


@attrs.frozen(repr=False)
class Trajectory(_Spatial):
    """``at.trajectory([(t, box), ...])``: a box moving through the video.

    ``t`` is the position in the video as a fraction (latent frame f of F sits at ``f / (F - 1)``);
    boxes are interpolated linearly between keyframes and held before the first and after the last.
    """

    keyframes: tuple[tuple[float, Box4], ...] = attrs.field(converter=_keyframes)
    frames: Selector = attrs.field(default=None, converter=_frames_selector)

    def box_at(self, frame: int, num_frames: int) -> Box4:
        """The interpolated box of latent frame ``frame``."""
        t = frame / (num_frames - 1) if num_frames > 1 else 0.0
        times = [k for k, _ in self.keyframes]
        if t <= times[0]:
            return self.keyframes[0][1]
        if t >= times[-1]:
            return self.keyframes[-1][1]
        i = max(j for j, k in enumerate(times) if k <= t)
        (ta, a), (tb, b) = self.keyframes[i], self.keyframes[i + 1]
        w = (t - ta) / (tb - ta)
        return tuple(p + w * (q - p) for p, q in zip(a, b))  # type: ignore[return-value]

    def frame_region(self, frame: int, ctx: SelectionContext) -> torch.Tensor:
        return _inside(self.box_at(frame, ctx.layout.num_frames), ctx.layout.grid)

    def __repr__(self) -> str:
        keys = ", ".join(f"({t:g}, {tuple(round(v, 4) for v in b)})" for t, b in self.keyframes)
        return f"trajectory([{keys}])"


@attrs.frozen(repr=False)
class Point(_Spatial):
    """``at.point(x, y, frames=None)``: the one token whose cell holds the point, in each chosen frame."""

    x: float = attrs.field(converter=lambda v: _fraction("point x", v))
    y: float = attrs.field(converter=lambda v: _fraction("point y", v))
    frames: Selector = attrs.field(default=None, converter=_frames_selector)

    def frame_region(self, frame: int, ctx: SelectionContext) -> torch.Tensor:
        rows, cols = ctx.layout.grid
        region = torch.zeros(rows, cols, dtype=torch.bool)
        region[min(int(self.y * rows), rows - 1), min(int(self.x * cols), cols - 1)] = True
        return region

    def __repr__(self) -> str:
        where = "" if isinstance(self.frames, Video) else f", frames={self.frames!r}"
        return f"point({self.x:g}, {self.y:g}{where})"


def _pixel_mask(value: object) -> torch.Tensor:
    try:
        mask = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"mask(pixels) must be a boolean [H, W] or [F, H, W] array, got {value!r} ({exc})") from None
    if mask.dtype != torch.bool or mask.dim() not in (2, 3) or mask.numel() == 0:
        raise ConfigError(
            f"mask must be a boolean [H, W] (every chosen frame) or [F, H, W] (one per latent frame) array, "
            f"got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    return mask.detach().cpu()


@attrs.frozen(repr=False, eq=False)
class PixelMask(_Spatial):
    """``at.mask(pixels, frames=None)``: a boolean pixel mask, [H, W] for every chosen frame or
    [F, H, W] per latent frame, downsampled to the token grid: a token is selected when at least
    half of its cell is covered (area average, then >= 0.5)."""

    pixels: torch.Tensor = attrs.field(converter=_pixel_mask)
    frames: Selector = attrs.field(default=None, converter=_frames_selector)

    def frame_region(self, frame: int, ctx: SelectionContext) -> torch.Tensor:
        pixels = self.pixels
        if pixels.dim() == 3:
            if pixels.shape[0] != ctx.layout.num_frames:
                raise ConfigError(
                    f"{self!r} has {pixels.shape[0]} frame masks but the call has {ctx.layout.num_frames} latent frames"
                )
            pixels = pixels[frame]
        covered = torch.nn.functional.interpolate(pixels[None, None].double(), size=ctx.layout.grid, mode="area")
        return covered[0, 0] >= 0.5

    def __repr__(self) -> str:
        return f"mask({'x'.join(map(str, self.pixels.shape))})"


def box(x0: float, y0: float, x1: float, y1: float, frames: object = None) -> Box:
    """The tokens of a box (fractions of the frame) in the chosen frames (default: every frame)."""
    return Box(x0, y0, x1, y1, frames)


def trajectory(keyframes: Sequence[tuple[float, Box4]] | dict[float, Box4], frames: object = None) -> Trajectory:
    """A box moving through the video, interpolated between keyframes ``(t, (x0, y0, x1, y1))``."""
    return Trajectory(keyframes, frames)


def point(x: float, y: float, frames: object = None) -> Point:
    """The token holding point (x, y) (fractions of the frame) in the chosen frames."""
    return Point(x, y, frames)


def mask(pixels: object, frames: object = None) -> PixelMask:
    """A boolean pixel mask downsampled to the token grid (tokens at least half covered)."""
    return PixelMask(pixels, frames)


__all__ = ["Box", "PixelMask", "Point", "TokenGeometry", "Trajectory", "box", "mask", "point", "token_geometry",
           "trajectory"]
