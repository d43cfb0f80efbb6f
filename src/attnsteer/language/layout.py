"""Token layouts: where each latent frame and each text span sits in one attention call's sequence.

A layout maps every token to a *group*: groups ``0 .. num_frames-1`` are the latent frames, the
groups after them are the extra segments (text, image or condition tokens), in order.
"""

from __future__ import annotations

import functools

import attrs
import torch

from ..errors import ConfigError

SEGMENT_KINDS = ("text", "image", "condition", "audio")


def _positive(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name} must be a positive int, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"{attribute.name} must be an int >= 0, got {value!r}")


@attrs.frozen
class Segment:
    """A contiguous run of non-frame tokens, e.g. the text tokens of a joint sequence.

    ``frame`` ties the segment to a latent frame (LTX condition tokens), so frame selectors
    include it; ``None`` means it belongs to no frame.
    """

    kind: str = attrs.field(validator=attrs.validators.in_(SEGMENT_KINDS))
    start: int = attrs.field(validator=_non_negative)
    stop: int = attrs.field(validator=_non_negative)
    frame: int | None = None
    name: str = ""

    def __attrs_post_init__(self) -> None:
        if self.stop <= self.start:
            raise ConfigError(f"Segment stop ({self.stop}) must be greater than start ({self.start})")

    @property
    def label(self) -> str:
        return self.name or self.kind


@attrs.frozen
class TokenLayout:
    """The token layout of one self-attention call: frames are frame-major and contiguous.

    ``grid`` is the (rows, cols) token grid of one frame, row-major (None where the adapter does not
    know it); spatial selectors (boxes, masks, points) need it.
    """

    num_frames: int = attrs.field(validator=_positive)
    tokens_per_frame: int = attrs.field(validator=_positive)
    video_start: int = attrs.field(default=0, validator=_non_negative)
    segments: tuple[Segment, ...] = attrs.field(default=(), converter=tuple)
    reference_frames: tuple[int, ...] = attrs.field(default=(0,), converter=tuple)
    grid: tuple[int, int] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))

    def __attrs_post_init__(self) -> None:
        if self.grid is not None:
            rows_cols_ok = len(self.grid) == 2 and all(isinstance(g, int) and g > 0 for g in self.grid)
            if not rows_cols_ok or self.grid[0] * self.grid[1] != self.tokens_per_frame:
                raise ConfigError(
                    f"grid must be (rows, cols) of positive ints with rows * cols == tokens_per_frame "
                    f"({self.tokens_per_frame}), got {self.grid!r}"
                )
        for f in self.reference_frames:
            if not isinstance(f, int) or not 0 <= f < self.num_frames:
                raise ConfigError(
                    f"reference_frames must hold frame indices in [0, {self.num_frames}), got {self.reference_frames!r}"
                )
        spans = sorted([(self.video_start, self.video_end, "video")] + [(s.start, s.stop, s.label) for s in self.segments])
        position = 0
        for start, stop, label in spans:
            if start != position:
                raise ConfigError(
                    f"TokenLayout spans must tile the sequence without gaps or overlaps: {label} starts at {start}, "
                    f"expected {position} (spans: {spans})"
                )
            position = stop
        for s in self.segments:
            if s.frame is not None and not 0 <= s.frame < self.num_frames:
                raise ConfigError(f"Segment {s.label!r} frame must be in [0, {self.num_frames}), got {s.frame}")

    @property
    def video_end(self) -> int:
        return self.video_start + self.num_frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        return max([self.video_end] + [s.stop for s in self.segments])

    @property
    def num_groups(self) -> int:
        return self.num_frames + len(self.segments)

    @property
    def generated_frames(self) -> tuple[int, ...]:
        return tuple(f for f in range(self.num_frames) if f not in self.reference_frames)

    def segment_group(self, index: int) -> int:
        """The group id of ``segments[index]``."""
        return self.num_frames + index

    def group_sizes(self) -> list[int]:
        """Number of tokens in each group, in group order."""
        return [self.tokens_per_frame] * self.num_frames + [s.stop - s.start for s in self.segments]

    def frame_level_groups(self) -> list[int]:
        """Per group, its index once each segment tied to a frame is merged into that frame: frames
        keep ``0 .. num_frames-1``, the untied segments follow in order (what frame maps count)."""
        untied = iter(range(self.num_frames, self.num_groups))
        tied = [s.frame if s.frame is not None else next(untied) for s in self.segments]
        return list(range(self.num_frames)) + tied

    def untied_segments(self) -> list[Segment]:
        """The segments that belong to no frame, in the order of :meth:`frame_level_groups`."""
        return [s for s in self.segments if s.frame is None]

    def group_names(self) -> list[str]:
        """Readable names of the groups, in group order."""
        return [f"frame {f}" for f in range(self.num_frames)] + [s.label for s in self.segments]

    def group_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """LongTensor [seq_len]: the group of every token (cached per layout and device)."""
        return _group_ids(self, torch.device(device))

    @classmethod
    def from_description(cls, d: dict) -> TokenLayout:
        """The layout back from :meth:`describe` (saved recordings)."""
        return cls(
            num_frames=d["num_frames"], tokens_per_frame=d["tokens_per_frame"], video_start=d["video_start"],
            segments=[Segment(**s) for s in d["segments"]], reference_frames=tuple(d["reference_frames"]),
            grid=d.get("grid"),
        )

    def describe(self) -> dict:
        """A JSON-friendly summary, for run records and saved recordings."""
        return {
            "num_frames": self.num_frames,
            "tokens_per_frame": self.tokens_per_frame,
            "video_start": self.video_start,
            "segments": [attrs.asdict(s) for s in self.segments],
            "reference_frames": list(self.reference_frames),
            "grid": None if self.grid is None else list(self.grid),
            "seq_len": self.seq_len,
        }


@functools.lru_cache(maxsize=64)
def _group_ids(layout: TokenLayout, device: torch.device) -> torch.Tensor:
    ids = torch.empty(layout.seq_len, dtype=torch.long)
    frames = torch.arange(layout.num_frames).repeat_interleave(layout.tokens_per_frame)
    ids[layout.video_start : layout.video_end] = frames
    for i, s in enumerate(layout.segments):
        ids[s.start : s.stop] = layout.segment_group(i)
    return ids.to(device)
