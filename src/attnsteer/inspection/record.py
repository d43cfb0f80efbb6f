"""Recordings of frame-level attention: where each latent frame's queries put their attention mass.

A :class:`Record` is the client of ``at.inspect``. For every self-attention call it receives the
per-group mass ``[B, H, G, G]`` that the kernel computes anyway, averages it over the batch rows of
each guidance branch (and over heads unless ``heads=True``) and adds it to a running sum keyed by
(step, layer, branch). Storage is O(steps x layers x G^2): it never grows with tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, RecordingError, SteeringError
from ..language.layout import TokenLayout
from ..language.rules import Rule
from ..language.selectors import GeneratedFrames, Groups, SelectionContext, Selector, check_selector
from ..runtime.call_state import ForwardState, LayerInfo
from ..runtime.stepping import LoopSteps
from .accumulator import Accumulator
from .files import load_npz, write_npz

BRANCH_NAMES = ("cond", "uncond", "perturbed", "unknown")
FORMAT_VERSION = 1


class Record(LoopSteps):
    """Frame-level attention aggregated while a pipeline runs (see ``at.inspect``); ``.step()`` serves a user's own
    sampling loop."""

    wants_mass = True
    rules: tuple[Rule, ...] = ()
    maps: Any = None  # a MapRecording when at.inspect(maps=...) keeps spatial maps
    batch_item: tuple[int, int] | None = None  # (index, count): records only that item's rows of a batched call

    def __init__(self, heads: bool = False, queries: Selector | None = None) -> None:
        if not isinstance(heads, bool):
            raise ConfigError(f"inspect(heads=...) must be True or False, got {heads!r}")
        self.heads = heads
        self.queries: Selector = GeneratedFrames() if queries is None else check_selector(queries, "inspect(queries=...)")
        self.layout: TokenLayout | None = None
        self.layers: dict[str, int] = {}
        self.timesteps: dict[int, float] = {}
        self.metadata: dict[str, Any] = {}
        self.records = Accumulator()  # (step, layer, branch) -> running sum [H', G, G] and count

    # --- recording -----------------------------------------------------------------------
    def selection_context(self, layout: TokenLayout) -> SelectionContext:
        return SelectionContext(layout)

    def on_call(self, state: ForwardState, layer: LayerInfo, applied: list[Rule], mass: torch.Tensor | None) -> None:
        if mass is None:
            return
        if self.layout is None:
            self.layout = state.layout
        elif state.layout != self.layout:
            raise SteeringError(
                f"recording in module {layer.qualified!r}: the token layout changed from {self.layout.describe()} to "
                f"{state.layout.describe()}; one recording holds one video size, use a new at.inspect block"
            )
        step = -1 if state.step.step is None else state.step.step
        if state.step.timestep is not None:
            self.timesteps[step] = state.step.timestep
        self.layers.setdefault(layer.qualified, layer.index)
        branches = state.branches or ("unknown",) * mass.shape[0]
        mass = mass.detach().to("cpu", torch.float64)
        for branch in dict.fromkeys(branches):
            rows = [i for i, b in enumerate(branches) if b == branch]
            m = mass[rows].mean(0)  # [H, G, G]
            if not self.heads:
                m = m.mean(0, keepdim=True)
            self.records.add((step, layer.qualified, branch), m)

    # --- selection -----------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        return sorted({k[0] for k in self.records.keys()})

    @property
    def branches(self) -> list[str]:
        return sorted({k[2] for k in self.records.keys()})

    def _keys(self, steps: Iterable[int] | None, layers: Any, branch: str | None) -> list[tuple[int, str, str]]:
        if branch is not None and branch not in BRANCH_NAMES:
            raise ConfigError(f"branch must be one of {BRANCH_NAMES} or None, got {branch!r}")
        wanted_steps = None if steps is None else set(_ints(steps, "steps"))
        wanted_layers = None if layers is None else self._layer_names(layers)
        keys = [
            k for k in self.records.keys()
            if (wanted_steps is None or k[0] in wanted_steps)
            and (wanted_layers is None or k[1] in wanted_layers)
            and (branch is None or k[2] == branch)
        ]
        if not keys:
            raise ConfigError(
                f"no recorded attention matches steps={steps!r}, layers={layers!r}, branch={branch!r}; recorded steps "
                f"{self.steps}, layers {list(self.layers)}, branches {self.branches}"
            )
        return sorted(keys)

    def _layer_names(self, layers: Any) -> set[str]:
        return layer_names(layers, self.layers)

    def group_mass(
        self, steps: Iterable[int] | None = None, layers: Any = None, branch: str | None = None, heads: Any = None
    ) -> torch.Tensor:
        """Mean over the selected records (and heads) of the group-to-group mass: [G, G] float32."""
        keys = self._keys(steps, layers, branch)
        stacked = torch.stack([self.records.mean(k) for k in keys])  # [R, H', G, G]
        if heads is not None:
            if not self.heads:
                raise ConfigError("heads=... needs a recording made with at.inspect(target, heads=True)")
            index = _ints([heads] if isinstance(heads, int) else heads, "heads")
            if max(index) >= stacked.shape[1]:
                raise ConfigError(f"heads {index} out of range: the recording has {stacked.shape[1]} heads")
            stacked = stacked[:, index]
        return stacked.mean(dim=(0, 1)).float()

    def frame_level_mass(
        self, steps: Iterable[int] | None = None, layers: Any = None, branch: str | None = None, heads: Any = None
    ) -> torch.Tensor:
        """:meth:`group_mass` with each segment tied to a frame merged into that frame: [F + U, F + U] for
        U untied segments (``layout.untied_segments()``). Merged rows are token-weighted means of their rows."""
        mass = self.group_mass(steps, layers, branch, heads)
        layout = self._require_layout()
        target = torch.tensor(layout.frame_level_groups())
        if bool((target == torch.arange(layout.num_groups)).all()):
            return mass
        merge = torch.nn.functional.one_hot(target, layout.num_frames + len(layout.untied_segments())).double()
        weights = torch.tensor(layout.group_sizes(), dtype=torch.float64)
        rows = merge.T @ (weights[:, None] * mass.double()) / (merge.T @ weights)[:, None]
        return (rows @ merge).float()

    def frame_map(
        self, steps: Iterable[int] | None = None, layers: Any = None, branch: str | None = None, heads: Any = None
    ) -> torch.Tensor:
        """[F, F]: mass that query frame i puts on key frame j, averaged over query tokens, heads and records.

        Tokens tied to a frame (LTX condition tokens) count as tokens of that frame, as queries and as keys.
        """
        f = self._require_layout().num_frames
        return self.frame_level_mass(steps, layers, branch, heads)[:f, :f]

    def text_mass(
        self, steps: Iterable[int] | None = None, layers: Any = None, branch: str | None = None, heads: Any = None
    ) -> torch.Tensor:
        """[F]: mass each query frame puts on text tokens of a joint text+video sequence; raises on a
        recording without text tokens (video-only self-attention, e.g. Wan), rather than return zeros."""
        layout = self._require_layout()
        text = [layout.num_frames + i for i, s in enumerate(layout.untied_segments()) if s.kind == "text"]
        if not text:
            raise ConfigError(
                "text_mass: this recording's self-attention holds no text tokens (a video-only model such as Wan, "
                "whose text enters through cross-attention); it has text mass only on joint models (CogVideoX, "
                "HunyuanVideo)"
            )
        mass = self.frame_level_mass(steps, layers, branch, heads)[: layout.num_frames]
        return mass[:, text].sum(-1)

    def reference_mass(
        self, by: str = "step", steps: Iterable[int] | None = None, layers: Any = None, branch: str | None = "cond",
        heads: Any = None,
    ) -> tuple[list[int], torch.Tensor]:
        """Mass the query frames (``queries``, default the generated ones) put on the reference frame(s),
        as a curve over steps (``by="step"``) or over layers (``by="layer"``): (x, y)."""
        layout = self._require_layout()
        rows = sorted(g for g in self.queries.groups(layout) if g < layout.num_frames)
        if not rows:
            raise ConfigError(f"inspect(queries={self.queries!r}) selects no query frame in this layout")
        ref = list(layout.reference_frames)
        keys = self._keys(steps, layers, branch)
        if by == "step":
            xs = sorted({k[0] for k in keys})
            curve = [self.frame_level_mass([x], layers, branch, heads)[rows][:, ref].sum(-1).mean() for x in xs]
        elif by == "layer":
            names = sorted({k[1] for k in keys}, key=lambda n: (self.layers[n], n))
            xs = [self.layers[n] for n in names]
            curve = [self.frame_level_mass(steps, n, branch, heads)[rows][:, ref].sum(-1).mean() for n in names]
        else:
            raise ConfigError(f"reference_mass(by=...) must be 'step' or 'layer', got {by!r}")
        return xs, torch.stack(curve)

    def diff(self, other: Record) -> RecordDiff:
        """This recording minus ``other`` (same layout), with the same selection methods."""
        if not isinstance(other, Record):
            raise ConfigError(f"diff(other) takes a Record, got {type(other).__name__}")
        if self._require_layout().num_frames != other._require_layout().num_frames:
            raise ConfigError(
                f"diff needs recordings of the same layout: {self.layout.num_frames} vs {other.layout.num_frames} frames"
            )
        return RecordDiff(self, other)

    def _require_layout(self) -> TokenLayout:
        if self.layout is None:
            raise ConfigError("the recording is empty: run the pipeline inside `with at.inspect(pipe) as rec:` first")
        return self.layout

    # --- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the recording as ``.npz`` (arrays plus JSON metadata); loads with :meth:`Record.load`."""
        keys, counts, sums = self.records.to_arrays((0, 1, 1, 1))
        meta = {
            "format": FORMAT_VERSION,
            "heads": self.heads,
            "queries": repr(self.queries),
            "query_groups": None if self.layout is None else sorted(self.queries.groups(self.layout)),
            "layout": None if self.layout is None else self.layout.describe(),
            "layers": self.layers,
            "timesteps": {str(k): v for k, v in self.timesteps.items()},
            "keys": keys,
            "counts": counts,
            **self.metadata,
        }
        return write_npz(path, meta, sums, "Record.save")

    @classmethod
    def load(cls, path: str | Path) -> Record:
        """Read a recording written by :meth:`save`, validated (see :mod:`attnsteer.inspection.files`)."""
        return load_npz(path, cls._from_saved, "recording")

    @classmethod
    def _from_saved(cls, meta: dict, sums: np.ndarray, path: Path | None = None) -> Record:
        if meta.get("format") != FORMAT_VERSION:
            raise RecordingError(f"unknown recording format {meta.get('format')!r} (expected {FORMAT_VERSION})")
        meta = dict(meta)
        rec = cls(heads=meta.pop("heads"))
        layout = meta.pop("layout")
        if layout is not None:
            rec.layout = TokenLayout.from_description(layout)
        query_groups = meta.pop("query_groups", None)
        if query_groups is not None:
            rec.queries = Groups(query_groups)
            if rec.layout is None:
                raise RecordingError(f"query_groups {query_groups!r} without a layout")
            try:
                rec.queries.groups(rec.layout)
            except ConfigError as exc:
                raise RecordingError(f"query_groups: {exc}") from None
        rec.layers = {str(k): int(v) for k, v in dict(meta.pop("layers")).items()}
        rec.timesteps = {int(k): float(v) for k, v in dict(meta.pop("timesteps")).items()}
        keys = [(int(step), str(layer), branch) for step, layer, branch in meta.pop("keys")]
        groups = rec.layout.num_groups if rec.layout is not None else None
        shape = (sums.shape[1] if rec.heads else 1, groups, groups)
        rec.records = Accumulator.from_arrays(keys, meta.pop("counts"), sums, shape, "records")
        for step, layer, branch in keys:
            if branch not in BRANCH_NAMES or layer not in rec.layers:
                raise RecordingError(f"record key {(step, layer, branch)!r} names an unknown branch or layer")
        meta.pop("format")
        meta.pop("queries", None)
        rec.metadata = meta
        return rec

    def __repr__(self) -> str:
        shape = "empty" if self.layout is None else f"{self.layout.num_frames} frames"
        return f"Record({shape}, steps={self.steps}, layers={len(self.layers)}, branches={self.branches})"


class RecordDiff:
    """The difference of two recordings: each method returns ``a.method(...) - b.method(...)``."""

    def __init__(self, a: Record, b: Record) -> None:
        self.a, self.b = a, b

    def frame_map(self, **selection: Any) -> torch.Tensor:
        return self.a.frame_map(**selection) - self.b.frame_map(**selection)

    def text_mass(self, **selection: Any) -> torch.Tensor:
        return self.a.text_mass(**selection) - self.b.text_mass(**selection)


def layer_names(layers: Any, known: dict[str, int]) -> set[str]:
    """The recorded layer names (of ``known``: name -> layer index) that ``layers`` selects: indices,
    names or regexes, one or several."""
    import re

    import numbers

    try:
        items = [layers] if isinstance(layers, (numbers.Integral, str)) else list(layers)
    except TypeError:
        raise ConfigError(f"layers must be layer indices or names/regexes, one or several, got {layers!r}") from None
    names = set()
    for item in items:
        if isinstance(item, numbers.Integral) and not isinstance(item, bool):
            names |= {n for n, i in known.items() if i == item}
        elif isinstance(item, str):
            names |= {n for n in known if n == item or re.fullmatch(item, n)}
        else:
            raise ConfigError(f"layers must hold layer indices or names/regexes, got {item!r}")
    return names


def _ints(values: Iterable[Any], field: str) -> list[int]:
    out = list(values)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in out):
        raise ConfigError(f"{field} must be integers, got {out!r}")
    return [int(v) for v in out]
