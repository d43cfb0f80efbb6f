"""Sweeps sharded over processes started by ``torchrun`` (``python -m torch.distributed.run``).

Rank r runs the values ``values[r::world_size]``; the results (picklable: videos, recordings) are
gathered to rank 0 with ``torch.distributed.gather_object``, which writes the one report. The
process group is the one ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``...): gloo on the CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import ConfigError

T = TypeVar("T")


def launched_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by it."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"RANK / WORLD_SIZE in the environment must be integers ({exc})") from None


def local_device(device: str | None) -> str | None:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device`` unchanged."""
    if device is not None and device.split(":")[0] == "cuda" and launched_world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init_process_group(device: str | None = None) -> bool:
    """Join torchrun's process group (gloo, nccl for a CUDA device) if launched with more than one
    process and not joined yet; returns whether this run is distributed."""
    if launched_world()[1] <= 1:
        return False
    if not dist.is_initialized():
        cuda = device is not None and device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(torch.device(local_device(device)))
        dist.init_process_group("nccl" if cuda else "gloo")
    return True


def shard(values: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The values rank ``rank`` of ``world_size`` runs: round-robin, ``values[rank::world_size]``."""
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} out of range for a world of {world_size} processes")
    return list(values[rank::world_size])


def sharded(run: Callable[[list[T]], dict[T, Any]], values: Sequence[T]) -> dict[T, Any] | None:
    """``run(my values)`` on every rank, merged on rank 0 in the order of ``values``; None on the other
    ranks (join the group first: :func:`init_process_group`). Without torchrun (or with one process) it
    is ``run(values)``."""
    rank, world = launched_world()
    if world <= 1:
        return run(list(values))
    if not dist.is_initialized():
        raise ConfigError(f"launched by torchrun as rank {rank} of {world} without a process group: call "
                          "attnsteer.sweeps.torchrun.init_process_group() first, or every rank would run every value")
    mine = shard(values, rank, world)
    results = run(mine) if mine else {}
    gathered: list[dict[T, Any] | None] = [None] * world if rank == 0 else None  # type: ignore[assignment]
    dist.gather_object(results, gathered, dst=0)
    if rank != 0:
        return None
    merged: dict[T, Any] = {}
    for part in gathered:
        merged.update(part or {})
    return {v: merged[v] for v in dict.fromkeys(values)}
