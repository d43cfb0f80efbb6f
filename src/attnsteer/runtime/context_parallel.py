"""diffusers context parallelism (``model.enable_parallelism(config=ContextParallelConfig(...))``) as
attention calls see it.

Under Ulysses on the native backend each rank calls SDPA on the full sequence for a slice of the
heads: rank r of the Ulysses group holds global heads ``[r * H_local, (r + 1) * H_local)``. Rules map
those local heads to global ones (:class:`HeadSlice`), and recorded mass is gathered over the group,
so every rank records what one process would. Ring attention computes attention in chunks through
backend ops that never call SDPA; it is refused (design for it: docs/scale.md).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ..errors import SteeringError


@attrs.frozen
class HeadSlice:
    """The heads of one Ulysses rank's attention call: global heads ``offset .. offset + local - 1`` of ``total``."""

    offset: int
    local: int
    total: int
    group: Any  # the Ulysses process group


def context_parallel_config(module: torch.nn.Module) -> Any:
    """The ``ContextParallelConfig`` diffusers set on an attention module's processor, or None."""
    config = getattr(getattr(module, "processor", None), "_parallel_config", None)
    return getattr(config, "context_parallel_config", None)


def head_slice(module: torch.nn.Module, local_heads: int, where: str) -> HeadSlice | None:
    """The head slice of a call of ``module`` with ``local_heads`` heads under Ulysses, None without context
    parallelism; raises for ring attention (its chunks never reach SDPA)."""
    cp = context_parallel_config(module)
    if cp is None:
        return None
    if (cp.ring_degree or 1) > 1:
        raise SteeringError(
            f"{where}: ring attention (ContextParallelConfig(ring_degree={cp.ring_degree})) computes attention in "
            "chunks through backend ops that never call SDPA, so attnsteer cannot steer or record it; use Ulysses "
            "(ulysses_degree > 1, ring_degree=1) on the native backend (see docs/scale.md)"
        )
    if getattr(cp, "ulysses_anything", False):
        raise SteeringError(f"{where}: ContextParallelConfig(ulysses_anything=True) gives ranks uneven head slices; "
                            "use plain Ulysses (an ulysses_degree dividing the heads)")
    degree = cp.ulysses_degree
    if degree <= 1:
        return None
    return HeadSlice(cp._ulysses_local_rank * local_heads, local_heads, local_heads * degree, cp._ulysses_mesh.get_group())


def gather_heads(mass: torch.Tensor, heads: HeadSlice) -> torch.Tensor:
    """Per-head mass ``[B, H_local, ...]`` of every rank of the Ulysses group, as ``[B, H, ...]`` in global head order."""
    import torch.distributed as dist

    parts = [torch.empty_like(mass) for _ in range(heads.total // heads.local)]
    dist.all_gather(parts, mass.contiguous(), group=heads.group)
    return torch.cat(parts, dim=1)
