"""Biased calls with many small key classes as one masked SDPA call per run length: the queries in runs that share a
bias row, each run a batch entry whose mask is its bias row spread over the keys.

The grouped kernel makes one fused call per key class and merges them. Where the classes are many and small (64
key groups of 64 keys at 4,096 tokens) each call is smaller than the CPU flash kernel's key block (512) and the
merges pass over the output once per class: 1.5-2.5x plain SDPA. Here a run of queries that share a bias row (a
frame, a query group) sees one additive mask row over all keys; the runs of one length go as the batch of one SDPA
call, with k and v broadcast to them (no copy), so the keys are read in full blocks and there is no merge. Runs
shorter than the kernel's 768-query threshold run with its smaller query blocks, so this pays only where classes
are many. Measured side by side on a 2-core CPU (``python -m benchmarks.guard``, docs/performance.md), 64 groups
at 4,096 tokens: 1.23x / 1.24-1.32x plain SDPA (1 head x 128 / 8 heads x 64) against the class calls' 1.75-1.95x /
1.66-1.87x; 16 groups of 256 keys and 64 groups of 512 keys stay on the class calls, which read 1.12x and 1.05x
there against 1.23x and 1.29x over query runs.

Exact where the additive mask holds ``logit + bias`` as precisely as the logit (``kernels.dense_bias``: float32 or
float64 and a finite bias of at most 16 in magnitude).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import dense_bias

MIN_CLASSES = 32  # key classes from which this pays ...
MAX_KEYS_PER_CLASS = 256  # ... while the classes are smaller than the flash kernel's key block
MIN_RUN = 64  # queries per run: shorter runs make too small query blocks
MAX_LENGTHS = 4  # distinct run lengths (one SDPA call each, per batch row)
MAX_MASK_BYTES = 64 * 2**20  # the masks of all runs, float32


class QueryRuns(NamedTuple):
    """The runs of a call's queries, by length: for each length, (the queries of its runs, run after run, as a
    LongTensor; each run's bias row spread over the keys, float32 [B|1, H|1, runs, Nk])."""

    by_length: dict[int, tuple[torch.Tensor, torch.Tensor]]


def plan(q_groups: torch.Tensor, k_groups: torch.Tensor, classes: int, bias4: torch.Tensor) -> QueryRuns | None:
    """The runs of queries sharing a bias row where a call whose keys fall in ``k_groups`` and ``classes`` key
    classes, with bias ``bias4`` [B|1, H|1, Gq, Gk], runs faster as masked calls over them (see the module
    docstring); else None. Derived once per prepared call: the runs' query positions and masks."""
    nk = k_groups.numel()
    if classes < MIN_CLASSES or nk > classes * MAX_KEYS_PER_CLASS or not dense_bias.moderate(bias4):
        return None
    n = q_groups.numel()
    if n == 0:
        return None
    turns = torch.nonzero(q_groups[1:] != q_groups[:-1]).flatten() + 1  # where the query group changes
    bias_rows = bias4.movedim(-2, 0)  # [Gq, B|1, H|1, Gk]: each query group's bias row
    differs = (bias_rows[q_groups[turns - 1]] != bias_rows[q_groups[turns]]).flatten(1).any(1)  # and with it the row
    starts = torch.cat([turns.new_zeros(1), turns[differs]])
    lengths = torch.diff(starts, append=torch.tensor([n], device=starts.device))
    distinct = torch.unique(lengths)
    if int(lengths.min()) < MIN_RUN or distinct.numel() > MAX_LENGTHS:
        return None
    if starts.numel() * bias4.shape[0] * bias4.shape[1] * nk * 4 > MAX_MASK_BYTES:  # the masks [B|1, H|1, runs, Nk]
        return None
    by_length = {}
    for length in distinct.tolist():
        first = starts[lengths == length]
        rows = (first[:, None] + torch.arange(length, device=first.device)).flatten()  # the runs' queries, in order
        by_length[length] = (rows, dense_bias.spread(bias4, q_groups[first], k_groups))
    return QueryRuns(by_length)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, runs: QueryRuns, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) @ v`` with each query's bias row over the keys, over the runs of :func:`plan`."""
    b, h, nq, d = q.shape
    out = torch.empty(b, h, nq, v.shape[-1], dtype=q.dtype, device=q.device)
    for length, (rows, runs_mask) in runs.by_length.items():
        mask = runs_mask.to(q.dtype)  # [B|1, H|1, R, Nk]
        count = mask.shape[-2]
        for i in range(b):
            runs_q = q[i][:, rows].view(h, count, length, d).transpose(0, 1)  # [R, H, L, D]
            mask_i = mask[i if mask.shape[0] > 1 else 0].transpose(0, 1)[:, :, None]  # [R, H|1, 1, Nk]
            o = F.scaled_dot_product_attention(runs_q, k[i].expand(count, *k.shape[1:]),
                                               v[i].expand(count, *v.shape[1:]), attn_mask=mask_i, scale=scale)
            out[i][:, rows] = o.transpose(0, 1).reshape(h, count * length, -1)
    return out
