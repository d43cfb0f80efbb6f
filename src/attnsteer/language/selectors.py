"""Token selectors: which tokens (frames, text spans, regions, words) a rule's queries or keys are.

Selectors are pure data. ``token_mask(ctx)`` resolves one against a :class:`SelectionContext`
(the layout of an attention call, and the prompt's words where known) into a boolean mask over
the sequence. Group-level selectors (frames, text, video) also answer ``groups(layout)``. They
combine with ``|`` (union), ``&`` (intersection) and ``~`` (complement).
"""

from __future__ import annotations

import functools
import numbers
from typing import TYPE_CHECKING, ClassVar

import attrs
import torch

from ..errors import ConfigError
from .layout import TokenLayout

if TYPE_CHECKING:
    from .words import WordIndex


@attrs.frozen
class SelectionContext:
    """What a selector is resolved against in one attention call: the token layout, and the
    prompt's word-to-token index when the session was given a prompt (for ``at.words``). ``rows``:
    the batch rows of the call that belong to the session (a batched sweep's share), None for all."""

    layout: TokenLayout
    words: WordIndex | None = None
    rows: tuple[bool, ...] | None = None
    query_frames: frozenset[int] | None = None  # per-frame schedules: the frames whose own step a rule is on in

    def limit_queries(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` (a rule's query tokens) restricted to ``query_frames`` and the segments tied to them."""
        if self.query_frames is None:
            return mask
        groups = torch.tensor(sorted(_frames_with_segments(self.layout, set(self.query_frames))), dtype=torch.long)
        return mask & torch.isin(self.layout.group_ids(), groups)


class Selector:
    """Base class: a set of tokens, resolved per attention call (docs/extending.md, "Writing a selector").

    Subclasses that select whole groups (frames, text segments) keep ``group_level = True`` and implement
    ``groups(layout)``; token-level ones (regions, words) set ``group_level = False`` and implement
    ``compute_mask(ctx)``, leaving ``groups`` unimplemented. Callers use :meth:`token_mask` (cached); both
    kinds combine with ``|``, ``&`` and ``~``. A subclass must be hashable (``attrs.frozen`` makes it so).
    """

    group_level: ClassVar[bool] = True

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        raise ConfigError(
            f"{self!r} selects tokens inside frames, not whole frames or segments; it has no group-level form"
        )

    def token_mask(self, ctx: SelectionContext) -> torch.Tensor:
        """BoolTensor [seq_len] on the CPU: which tokens of the call this selector holds (cached)."""
        return _cached_mask(self, ctx)

    def compute_mask(self, ctx: SelectionContext) -> torch.Tensor:
        """BoolTensor [seq_len]: the tokens selected in this call (uncached; override for token-level selectors)."""
        groups = torch.tensor(sorted(self.groups(ctx.layout)), dtype=torch.long)
        return torch.isin(ctx.layout.group_ids(), groups)

    def __or__(self, other: Selector) -> Selector:
        return Union(self, check_selector(other, "right operand of |"))

    def __and__(self, other: Selector) -> Selector:
        return Intersection(self, check_selector(other, "right operand of &"))

    def __invert__(self) -> Selector:
        return Complement(self)


def check_selector(value: object, field: str) -> Selector:
    """``value`` if it is a Selector, else a ConfigError naming ``field`` and the selectors there are."""
    if not isinstance(value, Selector):
        raise ConfigError(
            f"{field} must be a selector (at.frames[...], at.frames.reference, at.frames.generated, at.text, at.audio, "
            f"at.video, at.tokens, at.box(...), at.trajectory(...), at.point(...), at.mask(...), at.words(...), "
            f"or a combination with | & ~), got {value!r}"
        )
    return value


def _frames_with_segments(layout: TokenLayout, frames: set[int]) -> frozenset[int]:
    """Frame groups plus the segments tied to those frames."""
    tied = {layout.segment_group(i) for i, s in enumerate(layout.segments) if s.frame in frames}
    return frozenset(frames) | tied


def _is_index(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_index(value: object) -> object:
    """A numpy (or other) integer as a Python int; anything else unchanged, for the validator to refuse."""
    return int(value) if _is_index(value) else value


def _optional_index(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None and not _is_index(value):
        raise ConfigError(f"frames[...] slice {attribute.name} must be an int or None, got {value!r}")


@attrs.frozen(repr=False)
class FrameIndex(Selector):
    """One latent frame; negative indices count from the end."""

    index: int = attrs.field(converter=_as_index)

    def __attrs_post_init__(self) -> None:
        if not _is_index(self.index):
            raise ConfigError(f"frames[...] index must be an int or a slice, got {self.index!r}")

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        n = layout.num_frames
        if not -n <= self.index < n:
            raise ConfigError(
                f"{self!r} is out of range for a model call with {n} latent frames (allowed indices: {-n}..{n - 1})"
            )
        return _frames_with_segments(layout, {self.index % n})

    def __repr__(self) -> str:
        return f"frames[{self.index}]"


@attrs.frozen(repr=False)
class FrameSlice(Selector):
    """A slice of latent frames, with Python slice semantics (an empty slice selects nothing)."""

    start: int | None = attrs.field(default=None, converter=_as_index, validator=_optional_index)
    stop: int | None = attrs.field(default=None, converter=_as_index, validator=_optional_index)
    step: int | None = attrs.field(default=None, converter=_as_index, validator=_optional_index)

    def __attrs_post_init__(self) -> None:
        if self.step == 0:
            raise ConfigError("frames[...] slice step must not be 0")

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        return _frames_with_segments(layout, set(range(layout.num_frames)[self.start : self.stop : self.step]))

    def __repr__(self) -> str:
        parts = ["" if p is None else str(p) for p in (self.start, self.stop)]
        text = ":".join(parts) + ("" if self.step is None else f":{self.step}")
        return f"frames[{text}]"


@attrs.frozen(repr=False)
class ReferenceFrames(Selector):
    """The frames the model treats as the conditioning image (from the adapter's layout)."""

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        return _frames_with_segments(layout, set(layout.reference_frames))

    def __repr__(self) -> str:
        return "frames.reference"


@attrs.frozen(repr=False)
class GeneratedFrames(Selector):
    """Every latent frame that is not a reference frame."""

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        return _frames_with_segments(layout, set(layout.generated_frames))

    def __repr__(self) -> str:
        return "frames.generated"


@attrs.frozen(repr=False)
class Text(Selector):
    """Text tokens inside a joint text+video sequence."""

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        found = frozenset(layout.segment_group(i) for i, s in enumerate(layout.segments) if s.kind == "text")
        if not found:
            raise ConfigError("at.text selects nothing: this model's self-attention holds no text tokens")
        return found

    def __repr__(self) -> str:
        return "text"


@attrs.frozen(repr=False)
class Audio(Selector):
    """Audio tokens inside a joint audio+video sequence (segments of kind "audio")."""

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        found = frozenset(layout.segment_group(i) for i, s in enumerate(layout.segments) if s.kind == "audio")
        if not found:
            raise ConfigError("at.audio selects nothing: this call holds no audio tokens (the video self-attention "
                              "of LTX-2 and Kandinsky 6 holds none: their audio attends in its own streams, which "
                              "rules reach with Rule(attention='audio' | 'a2v' | 'v2a'))")
        return found

    def __repr__(self) -> str:
        return "audio"

    def __getitem__(self, item: int | slice) -> Selector:
        """``at.audio[i]`` / ``at.audio[a:b]``: audio tokens by index along the audio sequence (LTX-2: audio latent
        frames), Python index and slice semantics."""
        if isinstance(item, slice):
            return AudioTokens(item.start, item.stop, item.step)
        if not _is_index(item):
            raise ConfigError(f"audio[...] index must be an int or a slice, got {item!r}")
        item = int(item)
        return AudioTokens(item, None if item == -1 else item + 1, None, single=True)


@attrs.frozen(repr=False)
class AudioTokens(Selector):
    """Some of the audio tokens, by position along the audio tokens of the call (all its "audio" segments in order)."""

    group_level: ClassVar[bool] = False
    start: int | None = attrs.field(default=None, converter=_as_index, validator=_optional_index)
    stop: int | None = attrs.field(default=None, converter=_as_index, validator=_optional_index)
    step: int | None = attrs.field(default=None, converter=_as_index, validator=_optional_index)
    single: bool = False

    def __attrs_post_init__(self) -> None:
        if self.step == 0:
            raise ConfigError("audio[...] slice step must not be 0")

    def compute_mask(self, ctx: SelectionContext) -> torch.Tensor:
        positions = torch.cat([torch.arange(s.start, s.stop) for s in ctx.layout.segments if s.kind == "audio"]
                              or [torch.empty(0, dtype=torch.long)])
        if not positions.numel():
            Audio().groups(ctx.layout)  # raises: no audio tokens in this call
        n = positions.numel()
        if self.single and not -n <= self.start < n:
            raise ConfigError(f"{self!r} is out of range for a call with {n} audio tokens (allowed indices: "
                              f"{-n}..{n - 1})")
        mask = torch.zeros(ctx.layout.seq_len, dtype=torch.bool)
        mask[positions[list(range(n))[self.start : self.stop : self.step]]] = True
        return mask

    def __repr__(self) -> str:
        if self.single:
            return f"audio[{self.start}]"
        parts = ["" if p is None else str(p) for p in (self.start, self.stop)]
        return "audio[" + ":".join(parts) + ("" if self.step is None else f":{self.step}") + "]"


@attrs.frozen(repr=False)
class Video(Selector):
    """Every video token: all frames and the segments tied to a frame."""

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        return _frames_with_segments(layout, set(range(layout.num_frames)))

    def __repr__(self) -> str:
        return "video"


@attrs.frozen(repr=False)
class AllTokens(Selector):
    """Every token of the sequence."""

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        return frozenset(range(layout.num_groups))

    def __repr__(self) -> str:
        return "tokens"


@functools.lru_cache(maxsize=512)
def _cached_mask(selector: Selector, ctx: SelectionContext) -> torch.Tensor:
    mask = selector.compute_mask(ctx)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (ctx.layout.seq_len,):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ConfigError(f"{selector!r}.compute_mask(ctx) must return a bool tensor [seq_len] = "
                          f"[{ctx.layout.seq_len}], got {got}")
    return mask


def clear_mask_cache() -> None:
    """Drop the cached token masks (a selector may reference anything; the runtime clears this when a session ends)."""
    _cached_mask.cache_clear()


class _Combination(Selector):
    """Shared by | and &: group-level only when both sides are."""

    left: Selector
    right: Selector

    @property
    def group_level(self) -> bool:  # type: ignore[override]
        return self.left.group_level and self.right.group_level

    def compute_mask(self, ctx: SelectionContext) -> torch.Tensor:
        if self.group_level:
            return super().compute_mask(ctx)
        return self._combine(self.left.token_mask(ctx), self.right.token_mask(ctx))


@attrs.frozen(repr=False)
class Union(_Combination):
    left: Selector
    right: Selector
    _combine = staticmethod(torch.logical_or)

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        return self.left.groups(layout) | self.right.groups(layout)

    def __repr__(self) -> str:
        return f"({self.left!r} | {self.right!r})"


@attrs.frozen(repr=False)
class Intersection(_Combination):
    left: Selector
    right: Selector
    _combine = staticmethod(torch.logical_and)

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        return self.left.groups(layout) & self.right.groups(layout)

    def __repr__(self) -> str:
        return f"({self.left!r} & {self.right!r})"


@attrs.frozen(repr=False)
class Complement(Selector):
    inner: Selector

    @property
    def group_level(self) -> bool:  # type: ignore[override]
        return self.inner.group_level

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        return frozenset(range(layout.num_groups)) - self.inner.groups(layout)

    def compute_mask(self, ctx: SelectionContext) -> torch.Tensor:
        return ~self.inner.token_mask(ctx)

    def __repr__(self) -> str:
        return f"~{self.inner!r}"


def _group_ids(value: object) -> tuple[int, ...]:
    ids = tuple(value)  # type: ignore[arg-type]
    if not all(_is_index(i) and i >= 0 for i in ids):
        raise ConfigError(f"groups(...) takes group indices >= 0, got {value!r}")
    return tuple(sorted({int(i) for i in ids}))


@attrs.frozen(repr=False)
class Groups(Selector):
    """Explicit layout groups by index (how a loaded recording keeps the query frames it was made with)."""

    ids: tuple[int, ...] = attrs.field(converter=_group_ids)

    def groups(self, layout: TokenLayout) -> frozenset[int]:
        bad = [i for i in self.ids if i >= layout.num_groups]
        if bad:
            raise ConfigError(f"{self!r}: groups {bad} out of range for a layout of {layout.num_groups} groups")
        return frozenset(self.ids)

    def __repr__(self) -> str:
        return f"groups({list(self.ids)})"


class FrameSelectors:
    """``at.frames``: index or slice it for latent frames; ``.reference`` and ``.generated``."""

    reference = ReferenceFrames()
    generated = GeneratedFrames()

    def __getitem__(self, item: int | slice) -> Selector:
        if isinstance(item, slice):
            return FrameSlice(item.start, item.stop, item.step)
        return FrameIndex(item)

    def __repr__(self) -> str:
        return "frames"


frames = FrameSelectors()
text = Text()
audio = Audio()
video = Video()
tokens = AllTokens()
