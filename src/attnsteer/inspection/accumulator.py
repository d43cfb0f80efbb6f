"""Running means keyed by record: the float64 sums and counts that both recorders keep while a pipeline runs
(:class:`~attnsteer.inspection.record.Record` for frame maps, :class:`~attnsteer.inspection.map_recording.MapRecording`
for spatial maps), and their conversion to and from the arrays of a recording file."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import torch

from ..errors import RecordingError


class Accumulator:
    """Sums and counts per key: :meth:`mean` is the mean of the values added under one key, :meth:`pooled`
    the mean over every call of several keys. Values stay on the CPU in the dtype they are added in."""

    def __init__(self) -> None:
        self.sums: dict[Hashable, torch.Tensor] = {}
        self.counts: dict[Hashable, int] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self.sums

    def __len__(self) -> int:
        return len(self.sums)

    def keys(self) -> list[Any]:
        """The keys in the order they were first added."""
        return list(self.sums)

    def add(self, key: Hashable, values: torch.Tensor) -> None:
        """Add one call's ``values`` under ``key`` (copied on first use: the caller's tensor is never aliased)."""
        if key in self.sums:
            self.sums[key] += values
            self.counts[key] += 1
        else:
            self.sums[key] = values.clone()
            self.counts[key] = 1

    def mean(self, key: Hashable) -> torch.Tensor:
        """The mean of the values added under ``key``."""
        return self.sums[key] / self.counts[key]

    def pooled(self, keys: Iterable[Hashable]) -> torch.Tensor:
        """The mean over every call added under any of ``keys`` (each call weighs the same)."""
        keys = list(keys)
        return sum(self.sums[k] for k in keys) / sum(self.counts[k] for k in keys)

    def to_arrays(self, empty_shape: tuple[int, ...]) -> tuple[list[list[Any]], list[int], np.ndarray]:
        """(keys, counts, sums) in key order, as a recording file stores them; ``empty_shape`` is the array
        written when nothing was recorded."""
        keys = sorted(self.sums)
        sums = np.stack([self.sums[k].numpy() for k in keys]) if keys else np.zeros(empty_shape)
        return [list(k) for k in keys], [self.counts[k] for k in keys], sums

    @classmethod
    def from_arrays(cls, keys: list[Hashable], counts: list[int], sums: np.ndarray,
                    record_shape: tuple[int | None, ...], what: str) -> Accumulator:
        """The accumulator a file's ``keys``, ``counts`` and ``sums`` describe, checked: one count >= 1 per key,
        one sums row per key, each of ``record_shape``; ``what`` names the records in the error."""
        counts = [int(c) for c in counts]
        expected = (len(keys), *record_shape)
        if len(counts) != len(keys) or sums.shape[0] != len(keys) or (keys and sums.shape != expected) \
                or any(c < 1 for c in counts):
            raise RecordingError(f"{len(keys)} {what} with {len(counts)} counts do not match sums of shape "
                                 f"{sums.shape} (expected {expected}, counts >= 1)")
        if len(set(keys)) != len(keys):
            raise RecordingError(f"{what}: a key appears twice")
        acc = cls()
        for key, count, total in zip(keys, counts, sums):
            acc.sums[key] = torch.from_numpy(np.array(total, dtype=np.float64))
            acc.counts[key] = count
        return acc
