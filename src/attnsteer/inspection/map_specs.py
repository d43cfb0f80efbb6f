"""Which spatial attention maps to keep: ``at.maps.onto``, ``at.maps.region``, ``at.maps.received``,
and how they are aggregated over steps and layers (``map_steps``, ``map_layers`` of ``at.inspect``).

Every map is one number per token of the attention call, so the video part reads as [F, h, w]
on the token grid:

- ``onto(keys)``: per *query* token, the attention mass it puts on the key tokens of ``keys``
  (a frame, the reference frames, the text, prompt words, a box): "which parts of each frame copy
  the reference frame", "where does the word 'dog' land".
- ``region(queries, frame=None)``: per *key* token, the mean attention weight the query tokens of
  ``queries`` put on it: "where does the dog's head in frame 12 look".
- ``received(queries=at.video)``: the same over a large query set, by default the whole video:
  how much attention each token draws (attention sinks, reference-frame hot spots).

Maps are averaged over heads and over the batch rows of each guidance branch, then summed into
bins of steps and layers chosen up front, so a recording holds ``maps x step bins x layer bins x
branches`` vectors of N numbers, however long the run.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from ..errors import ConfigError
from ..language.selectors import FrameIndex, Selector, Video, check_selector
from ..validation import integer


def _plain_int(value: Any) -> Any:
    """A numpy integer as a Python int (any real integer type is a count); anything else unchanged."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value

ATTENTION = ("self", "cross")


class MapSpec:
    """Base class of the map kinds: ``selector`` is the token set the map is about (keys of ``onto``,
    queries of ``region``); ``label`` names the map in a recording and in figures; ``attention`` the
    calls it is read from."""

    axis: ClassVar[str]  # "query": one value per query token; "key": one value per key token
    attention: str = "self"

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def selector(self) -> Selector:
        raise NotImplementedError


@attrs.frozen
class Onto(MapSpec):
    """Per query token, the attention mass on the key tokens of ``keys``; ``attention="cross"`` reads
    the separate text cross-attention (Wan's ``attn2``) instead of the self-attention."""

    keys: Selector = attrs.field(converter=lambda s: check_selector(s, "maps.onto(keys)"))
    attention: str = attrs.field(default="self", validator=attrs.validators.in_(ATTENTION))
    axis: ClassVar[str] = "query"

    @property
    def label(self) -> str:
        return f"onto {self.keys!r}" + (" (cross-attention)" if self.attention == "cross" else "")

    @property
    def selector(self) -> Selector:
        return self.keys


@attrs.frozen
class Region(MapSpec):
    """Per key token, the mean attention weight that the query tokens of ``queries`` put on it."""

    queries: Selector = attrs.field(converter=lambda s: check_selector(s, "maps.region(queries)"))
    name: str = "region"
    axis: ClassVar[str] = "key"

    @property
    def label(self) -> str:
        return f"{self.name} {self.queries!r}"

    @property
    def selector(self) -> Selector:
        return self.queries


def onto(keys: Selector, attention: str = "self") -> Onto:
    """Per query token, the attention mass it puts on ``keys`` (``at.frames.reference``, ``at.text``,
    ``at.words("dog")``, ``at.box(...)``, ...). ``attention="cross"``: in the separate text
    cross-attention of models that have one (Wan), where ``keys`` are prompt words; the map is then
    over the video queries."""
    if attention not in ATTENTION:
        raise ConfigError(f"maps.onto(attention=...) must be one of {ATTENTION}, got {attention!r}")
    return Onto(keys, attention)


def region(queries: Selector, frame: int | None = None) -> Region:
    """Per key token, the mean attention weight of the query tokens of ``queries`` (restricted to latent
    frame ``frame`` when given), e.g. ``region(at.box(0.4, 0.2, 0.6, 0.4), frame=12)``."""
    queries = check_selector(queries, "maps.region(queries)")
    if frame is not None:
        queries = queries & FrameIndex(integer(frame, "maps.region(frame)"))
    return Region(queries)


def received(queries: Selector | None = None) -> Region:
    """Per key token, the mean attention weight that ``queries`` (default: every video token) put on it:
    how much attention each token draws. Costs about one extra attention pass per recorded call."""
    return Region(Video() if queries is None else queries, name="received from")


def check_maps(maps: Any) -> tuple[MapSpec, ...]:
    """``at.inspect(maps=...)`` as a tuple of distinct map specs."""
    items = (maps,) if isinstance(maps, MapSpec) else tuple(maps)
    bad = [m for m in items if not isinstance(m, MapSpec)]
    if bad or not items:
        raise ConfigError(
            "inspect(maps=...) takes at.maps.onto(...), at.maps.region(...) and at.maps.received(...) specs, "
            f"one or a list of them; got {maps!r}"
        )
    labels = [m.label for m in items]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"inspect(maps=...) names a map twice: {labels}")
    return items


# --- aggregation over steps and layers --------------------------------------------------------------

STEP_MODES = ("each", "all")
LAYER_MODES = ("each", "all")


@attrs.frozen
class StepBins:
    """How steps are binned: ``"each"``, ``"all"``, ``n`` equal ranges of the run's steps, or explicit
    ranges (``[range(0, 8), range(8, 40)]``)."""

    spec: Any = attrs.field(converter=_plain_int)

    @spec.validator
    def _check(self, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, str) and value in STEP_MODES:
            return
        if isinstance(value, int) and not isinstance(value, bool):
            integer(value, "inspect(map_steps=...)", minimum=1)
            return
        if isinstance(value, Sequence) and value and all(isinstance(r, range) and len(r) and r.step == 1 for r in value):
            starts = sorted((r.start, r.stop) for r in value)
            if any(b[0] < a[1] for a, b in zip(starts, starts[1:])) or starts[0][0] < 0:
                raise ConfigError(f"inspect(map_steps=...) ranges must not overlap nor be negative, got {value!r}")
            return
        raise ConfigError(
            f"inspect(map_steps=...) must be 'each', 'all', a number of equal step ranges (int >= 1) or a list of "
            f"non-empty ranges such as [range(0, 8), range(8, 40)], got {value!r}"
        )

    def label(self, step: int | None, num_steps: int | None) -> str | None:
        """The bin of ``step`` (None: the step lies in no given range, so it is not recorded)."""
        if self.spec == "all":
            return "all steps"
        if step is None:
            raise ConfigError(
                f"inspect(map_steps={self.spec!r}) needs the step index of each forward, which is unknown here (no "
                "timestep); use map_steps='all'"
            )
        if self.spec == "each":
            return f"step {step}"
        if isinstance(self.spec, int):
            if num_steps is None:
                raise ConfigError(
                    f"inspect(map_steps={self.spec}) splits the run's steps into equal ranges, but the step count is "
                    "unknown (a bare transformer): pass num_steps= to at.inspect, or use map_steps='each' or ranges"
                )
            bins = min(self.spec, num_steps)
            index = step * bins // num_steps
            return _range_label(-(-index * num_steps // bins), -(-(index + 1) * num_steps // bins))
        for r in self.spec:
            if step in r:
                return _range_label(r.start, r.stop)
        return None


def _range_label(start: int, stop: int) -> str:
    return f"step {start}" if stop == start + 1 else f"steps {start}-{stop - 1}"


@attrs.frozen
class LayerBins:
    """How layers are binned: ``"all"`` (one mean), ``"each"``, or groups of layer indices
    (``[range(0, 20), range(20, 40)]``)."""

    spec: Any = attrs.field()

    @spec.validator
    def _check(self, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, str) and value in LAYER_MODES:
            return
        if isinstance(value, Sequence) and value and all(_is_index_group(g) for g in value):
            flat = [i for g in value for i in g]
            if len(set(flat)) != len(flat):
                raise ConfigError(f"inspect(map_layers=...) groups must not share a layer, got {value!r}")
            return
        raise ConfigError(
            "inspect(map_layers=...) must be 'all', 'each' or a list of groups of layer indices such as "
            f"[range(0, 20), range(20, 40)], got {value!r}"
        )

    def label(self, index: int, qualified: str) -> str | None:
        """The bin of a layer (None: in no given group, so it is not recorded)."""
        if self.spec == "all":
            return "all layers"
        if self.spec == "each":
            return qualified
        for group in self.spec:
            if index in group:
                members = sorted(set(group))
                if len(members) == 1:
                    return f"layer {members[0]}"
                if members[-1] - members[0] + 1 == len(members):
                    return f"layers {members[0]}-{members[-1]}"
                return "layers " + ",".join(map(str, members))
        return None


def _is_index_group(group: object) -> bool:
    try:
        items = list(group)  # type: ignore[call-overload]
    except TypeError:
        return False
    return bool(items) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items)



__all__ = ["LayerBins", "MapSpec", "Onto", "Region", "StepBins", "check_maps", "onto", "received", "region"]
