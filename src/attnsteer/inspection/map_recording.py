"""Spatial maps recorded while a pipeline runs: ``rec.maps`` of ``at.inspect(pipe, maps=[...])``.

For every self-attention call whose step and layer fall in a bin (see :mod:`attnsteer.inspection.maps`), the
maps of the call (:mod:`attnsteer.runtime.call_maps`) are averaged over the batch rows of each guidance
branch and added to a running sum per (map, step bin, layer bin, branch). Reading one back gives
a :class:`Heatmap`: one value per token of the call, with the video part as [F, rows, cols].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from ..errors import ConfigError, RecordingError, SteeringError
from ..language.layout import TokenLayout
from ..language.selectors import SelectionContext
from ..language.words import WordIndex
from ..runtime.call_maps import CallMaps
from .accumulator import Accumulator
from .files import check_allocation, load_npz, write_npz
from .map_specs import LayerBins, MapSpec, StepBins, check_maps
from .record import BRANCH_NAMES, layer_names

if TYPE_CHECKING:
    from ..runtime.call_state import ForwardState, LayerInfo

FORMAT = "attnsteer-maps-1"
Key = tuple[str, str, str, str]  # (map label, step bin, layer bin, branch)


@attrs.frozen(eq=False)
class Heatmap:
    """One selected map: ``values`` [N] (float32) per token of the attention call, and what it averages."""

    label: str
    axis: str  # "query": the value of each query token; "key": the value of each key token
    values: torch.Tensor
    layout: TokenLayout
    steps: str
    layers: str
    branch: str
    queries: torch.Tensor | None = None  # bool [N]: the query set of a region map (drawn as an outline)

    @property
    def frames(self) -> torch.Tensor:
        """[F, rows, cols]: the video tokens on the token grid of each latent frame."""
        grid = self.layout.grid
        if grid is None:
            raise ConfigError(f"{self.label}: the recording's layout has no token grid ({self.layout.describe()})")
        video = self.values[self.layout.video_start : self.layout.video_end]
        return video.reshape(self.layout.num_frames, *grid)

    @property
    def text(self) -> torch.Tensor:
        """[T]: the text tokens of a joint sequence, in order."""
        spans = [s for s in self.layout.segments if s.kind == "text"]
        if not spans:
            raise ConfigError(f"{self.label}: this recording's attention holds no text tokens")
        return torch.cat([self.values[s.start : s.stop] for s in spans])

    @property
    def title(self) -> str:
        return f"{self.label} ({self.steps}, {self.layers}, {self.branch} branch)"


class MapRecording:
    """The spatial maps of one ``at.inspect`` block."""

    def __init__(self, maps: Any, steps: Any = 5, layers: Any = "all", words: WordIndex | None = None,
                 max_mb: float = 100.0) -> None:
        self.specs = check_maps(maps)
        self.step_bins = StepBins(steps)
        self.layer_bins = LayerBins(layers)
        self.words = words
        if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not max_mb > 0:
            raise ConfigError(f"inspect(map_max_mb=...) must be a positive number of megabytes, got {max_mb!r}")
        self.max_mb = float(max_mb)
        self.layout: TokenLayout | None = None
        self.layers: dict[str, int] = {}
        self.bin_steps: dict[str, set[int]] = {}
        self.bin_layers: dict[str, set[str]] = {}
        self.labels = [m.label for m in self.specs]
        self.axes = {m.label: m.axis for m in self.specs}
        self.query_sets: dict[str, torch.Tensor] = {}  # label -> bool [N] of each region map
        self.records = Accumulator()  # Key -> running sum [N] and count
        self.expected_layers = 0  # self-attention layers of the hooked models (set by the session)
        self._projected = False

    # --- recording -----------------------------------------------------------------------
    def bins(self, state: ForwardState, layer: LayerInfo, attention: str = "self") -> tuple[str, str] | None:
        """(step bin, layer bin) of a call of the ``attention`` kind, or None when no map reads it (no
        map of that kind, or the call is in no bin)."""
        if not any(spec.attention == attention for spec in self.specs):
            return None
        if not self._projected:
            self._check_projected_size(state)
        step_bin = self.step_bins.label(state.step.step, state.step.num_steps)
        layer_bin = self.layer_bins.label(layer.index, layer.qualified)
        return None if step_bin is None or layer_bin is None else (step_bin, layer_bin)

    def _check_projected_size(self, state: ForwardState) -> None:
        """At the run's first call, before any map is computed: refuse a request whose maps x step bins x
        layer bins x branches would exceed ``max_mb`` (branches seen later are checked as they come)."""
        self._projected = True
        steps, layers, num_steps = self.step_bins.spec, self.layer_bins.spec, state.step.num_steps
        step_bins = {"all": 1, "each": num_steps or 1}.get(steps, 0) if isinstance(steps, str) else (
            min(steps, num_steps or steps) if isinstance(steps, int) else len(steps))
        layer_bins = {"all": 1, "each": max(1, self.expected_layers)}.get(layers, 0) if isinstance(layers, str) \
            else len(layers)
        branches = len(set(state.branches)) if state.branches else 1
        count = len(self.specs) * step_bins * layer_bins * branches
        size_mb = count * state.layout.seq_len * 8 / 2**20
        if size_mb > self.max_mb:
            raise SteeringError(
                f"the spatial maps would take {size_mb:.4g} MB, past map_max_mb={self.max_mb:g} MB ({len(self.specs)} "
                f"maps x {step_bins} step bins x {layer_bins} layer bins x {branches} branches of "
                f"{state.layout.seq_len} tokens); refused before the run: keep fewer (coarser map_steps, now "
                f"{self.step_bins.spec!r}, or map_layers, now {self.layer_bins.spec!r}, fewer maps) or raise map_max_mb"
            )

    def sets(self, layout: TokenLayout, attention: str = "self") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The key sets of the ``onto`` maps and the query sets of the region maps read from calls of the
        ``attention`` kind (whose layout is ``layout``), in map order."""
        ctx = SelectionContext(layout, self.words)
        keys, queries = [], []
        for spec in self._of(attention):
            try:
                mask = spec.selector.token_mask(ctx)
            except ConfigError as exc:
                raise type(exc)(f"inspect map {spec.label!r}: {exc}") from exc
            (keys if spec.axis == "query" else queries).append(mask)
            if spec.axis == "key" and attention == "self":
                self.query_sets.setdefault(spec.label, mask)
        return keys, queries

    def _of(self, attention: str) -> list[MapSpec]:
        return [spec for spec in self.specs if spec.attention == attention]

    def unmatched_bins(self, steps: set[int], layers: set[int]) -> list[str]:
        """Why some maps were never kept: the given ``map_steps`` ranges that hold none of the ``steps`` that ran
        and the ``map_layers`` groups that hold none of the hooked self-attention ``layers`` (indices)."""
        found = []
        if not isinstance(self.step_bins.spec, (str, int)) and steps:
            found += [f"its map_steps range {r!r} holds none of the steps that ran ({sorted(steps)})"
                      for r in self.step_bins.spec if not any(step in r for step in steps)]
        if not isinstance(self.layer_bins.spec, str) and layers:
            found += [f"its map_layers group {sorted(set(g))} holds none of the {len(layers)} self-attention layers "
                      f"(indices {min(layers)}..{max(layers)})" for g in self.layer_bins.spec if not set(g) & layers]
        return found

    def add(self, state: ForwardState, layer: LayerInfo, bins: tuple[str, str], maps: CallMaps,
            attention: str = "self") -> None:
        """Add one call's maps, those read from calls of the ``attention`` kind (batch rows averaged per branch)."""
        layout = state.layout
        if self.layout is None:
            self.layout = layout
        elif layout != self.layout:
            raise SteeringError(
                f"map recording in module {layer.qualified!r}: the token layout changed from {self.layout.describe()} "
                f"to {layout.describe()}; one recording holds one video size, use a new at.inspect block"
            )
        step_bin, layer_bin = bins
        self.layers.setdefault(layer.qualified, layer.index)
        self.bin_steps.setdefault(step_bin, set()).add(-1 if state.step.step is None else state.step.step)
        self.bin_layers.setdefault(layer_bin, set()).add(layer.qualified)
        onto, regions = maps.onto.detach().double().cpu(), maps.regions.detach().double().cpu()
        branches = state.branches or ("unknown",) * onto.shape[0]
        columns = {"query": iter(range(onto.shape[-1])), "key": iter(range(regions.shape[1]))}
        for spec in self._of(attention):
            column = next(columns[spec.axis])
            values = onto[..., column] if spec.axis == "query" else regions[:, column]  # [B, N]
            for branch in dict.fromkeys(branches):
                rows = [i for i, b in enumerate(branches) if b == branch]
                self._accumulate((spec.label, step_bin, layer_bin, branch), values[rows].mean(0))

    def _accumulate(self, key: Key, values: torch.Tensor) -> None:
        """Add under ``key``; a new key is refused where the maps would outgrow ``map_max_mb``."""
        if key not in self.records and (len(self.records) + 1) * values.numel() * 8 / 2**20 > self.max_mb:
            raise SteeringError(
                f"the spatial maps would grow past map_max_mb={self.max_mb:g} MB ({len(self.records) + 1} maps of "
                f"{values.numel()} tokens); keep fewer: coarser map_steps (now {self.step_bins.spec!r}) or "
                f"map_layers (now {self.layer_bins.spec!r}), fewer maps, or raise map_max_mb"
            )
        self.records.add(key, values)

    @property
    def _sums(self) -> dict[Key, torch.Tensor]:
        """The running sums per key (read-only view for callers that measure what the recording holds)."""
        return self.records.sums

    # --- reading -------------------------------------------------------------------------
    @property
    def branches(self) -> list[str]:
        return sorted({k[3] for k in self.records.keys()})

    @property
    def step_bin_labels(self) -> list[str]:
        """The recorded step bins, in step order."""
        return sorted(self.bin_steps, key=lambda b: min(self.bin_steps[b]))

    @property
    def layer_bin_labels(self) -> list[str]:
        """The recorded layer bins, in layer order."""
        return sorted(self.bin_layers, key=lambda b: min(self.layers[n] for n in self.bin_layers[b]))

    def heatmap(self, map: MapSpec | str | int, steps: Iterable[int] | str | None = None, layers: Any = None,
                branch: str | None = None) -> Heatmap:
        """The mean of ``map`` over the recorded calls of the selected steps, layers and branch.

        ``map``: a spec given to ``at.inspect`` (or its label, or its index); ``steps``: step indices
        (whole bins only) or a bin label; ``layers``: layer indices / names / regexes (whole bins) or a
        bin label; ``branch``: "cond", "uncond", ... or None for all.
        """
        label = self._label(map)
        step_bins = self._select(steps, self.bin_steps, "steps", lambda s: set(_steps(s)))
        layer_bins = self._select(layers, self.bin_layers, "layers", lambda l: layer_names(l, self.layers))
        if branch is not None and branch not in BRANCH_NAMES:
            raise ConfigError(f"branch must be one of {BRANCH_NAMES} or None, got {branch!r}")
        keys = [k for k in self.records.keys() if k[0] == label and k[1] in step_bins and k[2] in layer_bins
                and (branch is None or k[3] == branch)]
        if not keys:
            raise ConfigError(
                f"no recorded map {label!r} matches steps={steps!r}, layers={layers!r}, branch={branch!r}; recorded "
                f"step bins {self.step_bin_labels}, layer bins {self.layer_bin_labels}, branches {self.branches}"
            )
        total = self.records.pooled(keys)
        return Heatmap(
            label=label, axis=self.axes[label], values=total.float(), layout=self.layout,
            steps=_join(sorted({k[1] for k in keys}, key=self.step_bin_labels.index)),
            layers=_join(sorted({k[2] for k in keys}, key=self.layer_bin_labels.index)),
            branch=branch or "every", queries=self.query_sets.get(label),
        )

    def _label(self, map: MapSpec | str | int) -> str:
        if isinstance(map, MapSpec):
            label = map.label
        elif isinstance(map, int) and not isinstance(map, bool) and 0 <= map < len(self.labels):
            label = self.labels[map]
        else:
            label = map
        if label not in self.labels:
            raise ConfigError(f"no map {map!r} in this recording; its maps are {self.labels}")
        return label

    @staticmethod
    def _select(wanted: Any, bins: dict[str, set], field: str, members: Any) -> set[str]:
        """The bins ``wanted`` selects: all (None), one by label, or every bin whose members it holds
        (a bin only partly selected is an error: the recording cannot split it)."""
        if wanted is None:
            return set(bins)
        if isinstance(wanted, str) and wanted in bins:
            return {wanted}
        chosen = members(wanted)
        partial = [b for b, inside in bins.items() if inside & chosen and not inside <= chosen]
        if partial:
            raise ConfigError(
                f"{field}={wanted!r} splits the recorded bins {partial} (their {field}: "
                f"{[sorted(bins[b]) for b in partial]}); select whole bins, or record with finer map_{field}"
            )
        return {b for b, inside in bins.items() if inside <= chosen}

    # --- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the maps as ``.npz`` (float64 sums plus JSON metadata); :meth:`load` reads them back exactly."""
        n = 0 if self.layout is None else self.layout.seq_len
        keys, counts, sums = self.records.to_arrays((0, n))
        meta = {
            "format": FORMAT, "maps": self.labels, "axes": self.axes,
            "query_sets": {label: torch.nonzero(m).flatten().tolist() for label, m in self.query_sets.items()},
            "layout": None if self.layout is None else self.layout.describe(), "layers": self.layers,
            "step_bins": {b: sorted(s) for b, s in self.bin_steps.items()},
            "layer_bins": {b: sorted(s) for b, s in self.bin_layers.items()},
            "keys": keys, "counts": counts,
        }
        return write_npz(path, meta, sums, "maps.save")

    @classmethod
    def load(cls, path: str | Path) -> MapRecording:
        """Read maps written by :meth:`save` (maps are then named by their labels)."""
        return load_npz(path, cls._from_saved, "map recording", sums_shape="[records, tokens]")

    @classmethod
    def _from_saved(cls, meta: dict, sums: np.ndarray, path: Path | None = None) -> MapRecording:
        if meta.get("format") != FORMAT:
            raise RecordingError(f"not a map recording (format {meta.get('format')!r}, expected {FORMAT!r})")
        if meta["layout"] is not None and path is not None:  # before anything is allocated from the declared size
            seq_len = TokenLayout.from_description(meta["layout"]).seq_len
            check_allocation(path, seq_len * max(1, len(dict(meta["query_sets"]))), "its query sets")
        rec = cls.__new__(cls)
        rec.specs, rec.words, rec.max_mb = (), None, float("inf")
        rec.step_bins = rec.layer_bins = None
        rec.labels = [str(m) for m in meta["maps"]]
        rec.axes = {str(k): str(v) for k, v in dict(meta["axes"]).items()}
        rec.layout = None if meta["layout"] is None else TokenLayout.from_description(meta["layout"])
        rec.query_sets = {}
        for label, tokens in dict(meta["query_sets"]).items():
            if label not in rec.labels or rec.layout is None:
                raise RecordingError(f"query set of an unknown map {label!r}")
            n = rec.layout.seq_len
            index = [t for t in tokens if isinstance(t, int) and not isinstance(t, bool) and 0 <= t < n]
            if len(index) != len(tokens):
                raise RecordingError(f"query set of map {label!r} must hold token indices in [0, {n}), got "
                                     f"{[t for t in tokens if t not in index][:5]}")
            rec.query_sets[str(label)] = torch.zeros(n, dtype=torch.bool)
            rec.query_sets[str(label)][index] = True
        rec.layers = {str(k): int(v) for k, v in dict(meta["layers"]).items()}
        rec.bin_steps = {str(b): {int(s) for s in v} for b, v in dict(meta["step_bins"]).items()}
        rec.bin_layers = {str(b): {str(s) for s in v} for b, v in dict(meta["layer_bins"]).items()}
        keys = [tuple(map(str, k)) for k in meta["keys"]]
        n = None if rec.layout is None else rec.layout.seq_len
        rec.records = Accumulator.from_arrays(keys, meta["counts"], sums, (n,), "maps")
        for key in keys:
            if key[0] not in rec.labels or key[1] not in rec.bin_steps or key[2] not in rec.bin_layers \
                    or key[3] not in BRANCH_NAMES:
                raise RecordingError(f"map key {key!r} names an unknown map, bin or branch")
        return rec

    def __repr__(self) -> str:
        return f"MapRecording(maps={self.labels}, step bins={self.step_bin_labels}, layer bins={self.layer_bin_labels})"


def _steps(steps: Any) -> list[int]:
    items = [steps] if isinstance(steps, int) else list(steps)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in items):
        raise ConfigError(f"steps must be step indices or a recorded bin label, got {steps!r}")
    return [int(s) for s in items]


def _join(labels: Sequence[str]) -> str:
    return labels[0] if len(labels) == 1 else f"{labels[0]} .. {labels[-1]}"
