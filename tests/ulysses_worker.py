"""Run by tests/test_distributed.py under ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU): tiny Wan's
transformer steered and recorded in one process, then under diffusers' Ulysses context parallelism
(ulysses_degree=2: each rank holds one of the two heads); writes the largest differences as JSON.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ulysses_worker.py OUT.json
"""

from __future__ import annotations

import gc
import json
import sys
from unittest import mock

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from torch.distributed.device_mesh import init_device_mesh

import attnsteer as at
from attnsteer.runtime import controller
from attnsteer.errors import SteeringError
from attnsteer.runtime.context_parallel import head_slice
from attnsteer.testing.tiny import tiny_wan

# per-head rules: a head-filtered frame bias (grouped path, per-head bias) and a score function that reads the
# head index (scored path): both must see global heads on each rank
RULES = (
    at.Rule(at.frames[1:], at.frames[0], at.bias(-3.0), heads=[1]),
    at.Rule(at.video, at.video, at.score_mod(lambda s, b, h, q, k: s - 0.5 * h * (q - k).abs() / 16, "by_head")),
)


def run(transformer, inputs):
    """Output and recordings (per head and pooled) of one steered forward."""
    with at.inspect(transformer, heads=True) as per_head, at.inspect(transformer) as pooled, \
            at.steer(transformer, *RULES):
        out = transformer(**inputs)[0]
    return out, per_head, pooled


def main(path: str) -> dict:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    transformer = tiny_wan(seed=0).transformer
    gen = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 36, 3, 8, 8, generator=gen), timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 16, 32, generator=gen),
        encoder_hidden_states_image=torch.randn(1, 5, 16, generator=gen), return_dict=False,
    )
    with torch.no_grad():
        plain = transformer(**inputs)[0]
        ref, ref_heads, ref_pooled = run(transformer, inputs)
        mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("ring", "ulysses"))
        # diffusers picks the device as rank % torch.accelerator.device_count(), which is 0 on a CPU-only
        # machine; the CPU mesh passed here is what the ranks use
        with mock.patch.object(torch.accelerator, "device_count", return_value=1):
            transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2, mesh=mesh))
        slices = set()

        def spy(module, local_heads, where):  # which head slice each steered call had
            found = head_slice(module, local_heads, where)
            slices.add(None if found is None else (found.offset, found.local, found.total))
            return found

        with mock.patch.object(controller, "head_slice", spy):
            out, heads, pooled = run(transformer, inputs)
        ring_error = ""
        cp = transformer.blocks[0].attn1.processor._parallel_config.context_parallel_config
        cp.ring_degree, cp.ulysses_degree = 2, 1  # as a ring config reads: refused before any attention runs
        try:
            run(transformer, inputs)
        except SteeringError as exc:
            ring_error = str(exc)
        cp.ring_degree, cp.ulysses_degree = 1, 2
    report = {
        "steered_vs_plain": float((ref - plain).abs().max()),
        "output": float((out - ref).abs().max()),
        "per_head_map": max(float((heads.frame_map(heads=h) - ref_heads.frame_map(heads=h)).abs().max())
                            for h in range(2)),
        "pooled_map": float((pooled.frame_map() - ref_pooled.frame_map()).abs().max()),
        "head_maps_differ": float((ref_heads.frame_map(heads=0) - ref_heads.frame_map(heads=1)).abs().max()),
        "ring_error": ring_error,
    }
    every = [None, None]
    dist.all_gather_object(every, sorted(slices))
    report["head_slices"] = every  # per rank: (first global head, local heads, total heads) of its calls
    if rank == 0:
        with open(path, "w") as f:
            json.dump(report, f)
    return report


def teardown() -> None:
    """Ends the gloo groups while the interpreter is whole: every rank waits for the others (no rank tears down
    a group another still uses), then the groups are shut down, and the last references to their C++ objects
    (the device mesh and the parallel hooks held by the transformer) are dropped and collected here instead of
    during interpreter finalization, where a gloo thread still joinable when its owner is destroyed aborts the
    process ("terminate called without an active exception")."""
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()


if __name__ == "__main__":
    main(sys.argv[1])
    teardown()
