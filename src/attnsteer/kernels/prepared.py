"""A grouped call prepared once: what :func:`~attnsteer.kernels.grouped.grouped_attention` derives from its groups
and bias alone (the group-id check, the bias check, the key classes, whether any bias is non-zero or -inf), derived
a single time for a bias table that every call of a steered run reuses, so a call in the steady state does the fused
calls and their merge and nothing else (no host sync on the bias or the groups).

:func:`prepared_attention` runs exactly :func:`grouped_attention`'s path without mass on the same numbers: its
output is bit for bit ``grouped_attention``'s (``tests/test_percall.py`` checks it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import KernelError
from . import dense_bias, grouped, query_runs


class PreparedGroups(NamedTuple):
    """The groups and bias of grouped calls, checked, with the key classes they split into (see the module docstring)."""

    q_groups: torch.Tensor  # [Nq] long, on the calls' device
    k_groups: torch.Tensor  # [Nk] long, on the calls' device
    bias4: torch.Tensor | None  # float32 [B|1, H|1, Gq, Gk], on the calls' device
    biased: bool  # some bias is non-zero: the class calls run (else one SDPA call)
    blocks: bool  # some bias is -inf: the merge guards rows that see no key
    classes: list  # grouped._key_classes of the keys (split by distinct bias column)
    dense: torch.Tensor | None = None  # the bias spread over the tokens (float32 [B|1, H|1, Nq, Nk]) where a call
    # runs as one SDPA call with it as mask (kernels.dense_bias: small, a moderate finite bias)
    runs: query_runs.QueryRuns | None = None  # the query runs, with their masks, where a call runs as masked calls
    # over them (kernels.query_runs: many small key classes, a moderate finite bias)


def prepare_groups(
    q_groups: torch.Tensor, k_groups: torch.Tensor, bias: torch.Tensor | None, batch: int, heads: int,
    *, num_q_groups: int | None = None, num_k_groups: int | None = None,
) -> PreparedGroups:
    """Check groups and bias as :func:`grouped_attention` does (raising the same errors) and derive the key classes
    of calls of ``batch`` rows and ``heads`` heads; groups and bias must be on the calls' device already."""
    gq, gk = grouped._group_counts(q_groups, k_groups, q_groups.numel(), k_groups.numel(), bias, num_q_groups,
                                   num_k_groups)
    bias4 = grouped._bias4(bias, batch, heads, gq, gk)
    biased = bias4 is not None and bool(bias4.any())
    blocks = biased and bool(torch.isneginf(bias4).any())
    classes = grouped._key_classes(k_groups, gk, bias4, split_all=False) if biased else []
    small = biased and dense_bias.takes(q_groups.numel(), k_groups.numel(), bias4)
    dense = dense_bias.spread(bias4, q_groups, k_groups) if small else None
    runs = query_runs.plan(q_groups, k_groups, len(classes), bias4) if biased and not small else None
    return PreparedGroups(q_groups, k_groups, bias4, biased, blocks, classes, dense, runs)


def prepared_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prepared: PreparedGroups, scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grouped_attention(q, k, v, prepared groups, bias, scale, attn_mask)[0]``, without deriving anything from
    the groups and bias again (see :func:`prepare_groups`); q, k, v are checked as there."""
    b, h, nq, d = grouped._check_qkv(q, k, v)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise KernelError("prepared grouped attention has no backward; steered forwards that need gradients take "
                          "the differentiable score path")
    nk = k.shape[-2]
    if nq != prepared.q_groups.numel() or nk != prepared.k_groups.numel() or nk == 0:
        raise KernelError(f"a prepared grouped call of {prepared.q_groups.numel()} queries and "
                          f"{prepared.k_groups.numel()} keys got q {tuple(q.shape)}, k {tuple(k.shape)}")
    bias4 = prepared.bias4
    if bias4 is not None and (bias4.shape[0] not in (1, b) or bias4.shape[1] not in (1, h)):
        raise KernelError(f"a grouped call prepared with bias {tuple(bias4.shape)} got q {tuple(q.shape)}")
    if b * h * nq == 0:
        return q.new_zeros(b, h, nq, v.shape[-1])
    scale = d**-0.5 if scale is None else float(scale)
    mask = grouped.additive_mask(attn_mask, q.dtype, (b, h, nq, nk))
    if not prepared.biased:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        if mask is not None:
            out = out.masked_fill(grouped._hidden_by_mask(mask, (b, h, nq))[..., None], 0)
        return out
    if prepared.dense is not None and mask is None and dense_bias.runs_here(q.dtype):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=prepared.dense.to(q.dtype), scale=scale)
    if prepared.runs is not None and mask is None and dense_bias.runs_here(q.dtype):
        return query_runs.attention(q, k, v, prepared.runs, scale)
    step = grouped.query_chunk_rows(nq, b * h, grouped._row_bytes(q, v, 0, 0))
    whole = step >= nq
    out = None if whole else torch.empty(b, h, nq, v.shape[-1], dtype=q.dtype, device=q.device)
    chunks = grouped._attend_in_chunks(q, k, v, prepared.q_groups, prepared.classes, bias4, scale, mask, out, step,
                                       may_block=mask is not None or prepared.blocks)
    for _, _, _, merged in chunks:
        if whole:
            out = merged if merged.dtype == q.dtype else merged.to(q.dtype)
        del merged
    return out
