"""Pair predicates: which (query, key) pairs of a rule's selection it acts on, decided per pair.

``Rule(..., pairs=at.same_region(at.box(...)))`` narrows the rule to the selected pairs that
satisfy the predicate. Predicates combine with ``&``, ``|`` and ``~``.

Some predicates depend only on which frame and which regions a token is in (``same_region``,
``frame_distance``): they are constant over the cells of the partition that those selectors
induce, so rules using them keep the fused grouped kernel. Others compare token positions
(``same_location``, ``token_distance``) and run on the exact chunked score path.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import attrs
import numpy as np
import torch

from ..errors import ConfigError
from .geometry import token_geometry
from .selectors import SelectionContext, Selector, check_selector

PairFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Pairs:
    """Base class: ``bind(ctx, device)`` returns ``fn(q_index, k_index) -> bool [len(q), len(k)]``
    with the call's token facts already on the device (a pure tensor function, cheap to compile)."""

    elementwise: bool = False

    def selectors(self) -> tuple[Selector, ...]:
        """Selectors whose membership the predicate reads (the grouped path refines cells by them)."""
        return ()

    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        raise NotImplementedError

    def evaluate(self, ctx: SelectionContext, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
        """bool [len(q_index), len(k_index)]: which of these pairs satisfy the predicate."""
        return self.bind(ctx, q_index.device)(q_index, k_index)

    def __and__(self, other: Pairs) -> Pairs:
        return BothPairs(self, check_pairs(other, "right operand of &"))

    def __or__(self, other: Pairs) -> Pairs:
        return EitherPairs(self, check_pairs(other, "right operand of |"))

    def __invert__(self) -> Pairs:
        return NotPairs(self)


def check_pairs(value: object, field: str) -> Pairs:
    """``value`` if it is a pair predicate, else a ConfigError naming ``field`` and the predicates there are."""
    if not isinstance(value, Pairs):
        raise ConfigError(
            f"{field} must be a pair predicate (at.same_region(...), at.same_location(), at.frame_distance(...), "
            f"at.token_distance(...), or a combination with & | ~), got {value!r}"
        )
    return value


def _non_negative_int(name: str):
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name}({attribute.name}=...) must be an int >= 0, got {value!r}")

    return check


def _as_bool(value: object) -> object:
    return bool(value) if isinstance(value, np.bool_) else value


def _as_int(value: object) -> object:
    """A numpy (or other) integer as a Python int; anything else unchanged, for the validator to refuse."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _flag(name: str):
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{name}({attribute.name}=...) must be True or False, got {value!r}")

    return check


@attrs.frozen(repr=False)
class SameRegion(Pairs):
    """Pairs whose query and key are both inside ``region`` or both outside it."""

    region: Selector = attrs.field(converter=lambda v: check_selector(v, "same_region(region)"))

    def selectors(self) -> tuple[Selector, ...]:
        return (self.region,)

    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        inside = self.region.token_mask(ctx).to(device)
        return lambda q, k: inside[q][:, None] == inside[k][None, :]

    def __repr__(self) -> str:
        return f"same_region({self.region!r})"


@attrs.frozen(repr=False)
class FrameDistance(Pairs):
    """Pairs of frame tokens at most ``max`` latent frames apart (a temporal window, e.g. FreeLong's band)."""

    max: int = attrs.field(converter=_as_int, validator=_non_negative_int("frame_distance"))

    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        frame = token_geometry(ctx.layout).frame.to(device)

        def fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            fq, fk = frame[q][:, None], frame[k][None, :]
            return (fq >= 0) & (fk >= 0) & ((fq - fk).abs() <= self.max)

        return fn

    def __repr__(self) -> str:
        return f"frame_distance({self.max})"


@attrs.frozen(repr=False)
class FrameWindow(Pairs):
    """Pairs whose key frame lies in the query frame's window of ``size`` latent frames (FreeLong):
    frames ``[i - size // 2, i + size // 2]`` clipped to the video; with ``adjusted=True`` a window
    clipped at either end is shifted back to ``size`` frames (FreeLong's ``get_adjusted_local_mask``)."""

    size: int = attrs.field(converter=_as_int, validator=_non_negative_int("frame_window"))
    adjusted: bool = attrs.field(default=False, validator=_flag("frame_window"), converter=_as_bool)

    def __attrs_post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"frame_window(size=...) must be >= 1 latent frame, got {self.size}")

    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        frame = token_geometry(ctx.layout).frame.to(device)
        n = ctx.layout.num_frames

        def fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            fq, fk = frame[q][:, None], frame[k][None, :]
            start = (fq - self.size // 2).clamp_min(0)
            end = (fq + self.size // 2 + 1).clamp_max(n)
            if self.adjusted:
                short = (end - start) < self.size
                at_left = short & (start == 0)
                end = torch.where(at_left, torch.full_like(end, min(n, self.size)), end)
                start = torch.where(short & ~at_left, (end - self.size).clamp_min(0), start)
            return (fq >= 0) & (fk >= start) & (fk < end)

        return fn

    def __repr__(self) -> str:
        return f"frame_window({self.size}{', adjusted=True' if self.adjusted else ''})"


@attrs.frozen(repr=False)
class SameLocation(Pairs):
    """Pairs of frame tokens at the same (row, column) of the token grid, in any frames."""

    elementwise = True

    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        if ctx.layout.grid is None:
            raise ConfigError("same_location() needs the token grid of a frame, which this model's adapter does not report")
        geo = token_geometry(ctx.layout)
        row, col = geo.row.to(device), geo.col.to(device)

        def fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            rq = row[q][:, None]
            return (rq >= 0) & (rq == row[k][None, :]) & (col[q][:, None] == col[k][None, :])

        return fn

    def __repr__(self) -> str:
        return "same_location()"


@attrs.frozen(repr=False)
class TokenDistance(Pairs):
    """Pairs more than ``min`` positions apart in the sequence (``|i - j| > min``; UltraViCo's window)."""

    elementwise = True
    min: int = attrs.field(converter=_as_int, validator=_non_negative_int("token_distance"))

    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        return lambda q, k: (q[:, None] - k[None, :]).abs() > self.min

    def __repr__(self) -> str:
        return f"token_distance({self.min})"


@attrs.frozen(repr=False)
class BothPairs(Pairs):
    left: Pairs
    right: Pairs

    @property
    def elementwise(self) -> bool:  # type: ignore[override]
        return self.left.elementwise or self.right.elementwise

    def selectors(self) -> tuple[Selector, ...]:
        return self.left.selectors() + self.right.selectors()

    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        left, right = self.left.bind(ctx, device), self.right.bind(ctx, device)
        return lambda q, k: left(q, k) & right(q, k)

    def __repr__(self) -> str:
        return f"({self.left!r} & {self.right!r})"


@attrs.frozen(repr=False)
class EitherPairs(BothPairs):
    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        left, right = self.left.bind(ctx, device), self.right.bind(ctx, device)
        return lambda q, k: left(q, k) | right(q, k)

    def __repr__(self) -> str:
        return f"({self.left!r} | {self.right!r})"


@attrs.frozen(repr=False)
class NotPairs(Pairs):
    inner: Pairs

    @property
    def elementwise(self) -> bool:  # type: ignore[override]
        return self.inner.elementwise

    def selectors(self) -> tuple[Selector, ...]:
        return self.inner.selectors()

    def bind(self, ctx: SelectionContext, device: torch.device) -> PairFn:
        inner = self.inner.bind(ctx, device)
        return lambda q, k: ~inner(q, k)

    def __repr__(self) -> str:
        return f"~{self.inner!r}"


def same_region(region: Selector) -> SameRegion:
    """Pairs both inside or both outside ``region`` (``~same_region(r)``: one in, one out; Peekaboo)."""
    return SameRegion(region)


def frame_distance(max: int) -> FrameDistance:  # noqa: A002 - reads like the predicate
    """Pairs of frame tokens at most ``max`` latent frames apart."""
    return FrameDistance(max)


def frame_window(size: int, adjusted: bool = False) -> FrameWindow:
    """Pairs whose key frame is in the query frame's local window of ``size`` latent frames."""
    return FrameWindow(size, adjusted)


def same_location() -> SameLocation:
    """Pairs at the same position of the frame's token grid (any frames)."""
    return SameLocation()


def token_distance(min: int) -> TokenDistance:  # noqa: A002
    """Pairs more than ``min`` sequence positions apart."""
    return TokenDistance(min)
