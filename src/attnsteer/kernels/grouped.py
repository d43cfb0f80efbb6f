"""Exact attention with a logit bias that is constant per (query group, key group), and the
attention mass each query group puts on each key group, from fused kernels.

Why it is exact: for a partition of the keys into classes c, softmax attention equals
``sum_c w_c * out_c`` with ``out_c`` the attention restricted to class c and
``w_c = exp(lse_c + bias_c - lse_total)``, where ``lse_c`` is class c's log-sum-exp. A bias that
is constant over a class moves only ``w_c``. So one fused call per class plus a float32
log-sum-exp merge gives the biased softmax; the total work is one attention call and the memory
O(N * (D + G)). The ``w_c`` are the attention mass per key class, so frame maps come for free.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import KernelError
from . import dense_bias, query_runs
from .backends import class_attention

WHOLE_BYTES = 32 * 2**20  # a call whose merge buffers stay under this runs unchunked; larger ones ...
QUERY_CHUNKS = 12  # ... run the queries in up to this many chunks ...
MIN_CHUNK_BLOCKS = 4  # ... of at least this many query blocks (the CPU flash kernel takes smaller blocks, and
# runs slower, on calls of fewer than 768 query rows) ...
BLOCKS_PER_THREAD = 8  # ... and enough query blocks per head to keep every thread busy
QUERY_BLOCK = 256  # queries per block of the CPU flash kernel (its unit of parallel work)


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_groups: torch.Tensor,
    k_groups: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    return_mass: bool = False,
    *,
    num_q_groups: int | None = None,
    num_k_groups: int | None = None,
    per_query: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | QueryMass | None]:
    """``softmax(q k^T * scale + bias[q_groups][:, k_groups] + attn_mask) @ v`` and, with
    ``return_mass``, the mass [B, H, Gq, Gk] (float32): per query group, the mean over its queries
    of the total attention weight on each key group.

    Shapes: q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv]; groups LongTensor [Nq] / [Nk];
    bias [Gq, Gk] | [B, Gq, Gk] | [B, H, Gq, Gk] (``-inf`` allowed); attn_mask boolean (True =
    attend) or additive, broadcastable to [B, H, Nq, Nk]. A query row that the mask alone hides
    from every key gets output 0 (as SDPA gives) and mass 0; a row the bias blocks raises.

    ``per_query=True`` (implies ``return_mass``) returns the mass before it is averaged over query
    groups, as a :class:`QueryMass`: the weight of every query on each key group and the
    log-sum-exp of every query's biased logits (spatial heatmaps are built from them).
    """
    b, h, nq, d, gq, gk = _checked_inputs(q, k, v, q_groups, k_groups, bias, num_q_groups, num_k_groups)
    nk = k.shape[-2]
    return_mass = return_mass or per_query
    if b * h * nq == 0:  # nothing to attend: empty outputs of the right shapes
        empty_mass = torch.zeros(b, h, gq, gk, device=q.device) if return_mass else None
        if return_mass and per_query:
            empty_mass = QueryMass(torch.zeros(b, h, nq, gk, device=q.device), torch.zeros(b, h, nq, device=q.device))
        return q.new_zeros(b, h, nq, v.shape[-1]), empty_mass
    bias4 = _bias4(bias, b, h, gq, gk)
    scale = d**-0.5 if scale is None else float(scale)
    mask = additive_mask(attn_mask, q.dtype, (b, h, nq, nk))
    if not return_mass and (bias4 is None or not bool(bias4.any())):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        if mask is not None:
            out = out.masked_fill(_hidden_by_mask(mask, (b, h, nq))[..., None], 0)
        return out, None

    if not return_mass and mask is None and dense_bias.fits(q, nk, bias4):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_bias.spread(bias4, q_groups, k_groups, q.dtype),
                                              scale=scale), None
    classes = _key_classes(k_groups, gk, bias4, split_all=return_mass)
    if not return_mass and mask is None and dense_bias.runs_here(q.dtype):
        runs = query_runs.plan(q_groups, k_groups, len(classes), bias4)
        if runs is not None:
            return query_runs.attention(q, k, v, runs, scale), None
    row_bytes = _row_bytes(q, v, len(classes) if return_mass else 0, gk if per_query else 0)
    step = query_chunk_rows(nq, b * h, row_bytes)
    whole = step >= nq  # one chunk: its merged rows become the output (no copy into a separate tensor)
    out = None if whole else torch.empty(b, h, nq, v.shape[-1], dtype=q.dtype, device=q.device)
    chunks = _attend_in_chunks(q, k, v, q_groups, classes, bias4, scale, mask, out, step)
    weights = lse = mass = None
    if per_query:
        weights = torch.zeros(b, h, nq, gk, dtype=torch.float32, device=q.device)
        lse = torch.empty(b, h, nq, dtype=torch.float32, device=q.device)
    elif return_mass:
        mass = torch.zeros(b, h, gq, gk, dtype=torch.float32, device=q.device)
    for rows, class_logits, total, merged in chunks:
        if whole:
            out = merged if merged.dtype == q.dtype else merged.to(q.dtype)
        del merged
        if per_query:
            weights[:, :, rows], lse[:, :, rows] = _query_mass(class_logits, total, gk)
        elif return_mass:
            _add_mass(mass, class_logits, total, q_groups[rows])
    if per_query:
        return out, QueryMass(weights, lse)
    if not return_mass:
        return out, None
    counts = torch.bincount(q_groups, minlength=gq).clamp_min(1).float()
    return out, mass / counts[:, None]


def grouped_attention_chunks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_groups: torch.Tensor,
    k_groups: torch.Tensor,
    out: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    *,
    num_q_groups: int | None = None,
    num_k_groups: int | None = None,
) -> Iterator[tuple[slice, QueryMass]]:
    """:func:`grouped_attention` with ``per_query=True``, one chunk of query rows at a time: writes each
    chunk's output rows into ``out`` [B, H, Nq, Dv] (None: the output is not wanted) and yields (rows,
    that chunk's :class:`QueryMass`), so a caller reduces the per-query weights chunk by chunk and never
    holds [B, H, Nq, Gk]."""
    b, h, nq, d, gq, gk = _checked_inputs(q, k, v, q_groups, k_groups, bias, num_q_groups, num_k_groups)
    if out is not None and (out.shape != (b, h, nq, v.shape[-1]) or out.dtype != q.dtype):
        raise KernelError(f"out must have shape {(b, h, nq, v.shape[-1])} and dtype {q.dtype}, got "
                          f"{tuple(out.shape)} {out.dtype}")
    if b * h * nq == 0:  # nothing to attend: no chunk
        return
    bias4 = _bias4(bias, b, h, gq, gk)
    scale = d**-0.5 if scale is None else float(scale)
    mask = additive_mask(attn_mask, q.dtype, (b, h, nq, k.shape[-2]))
    classes = _key_classes(k_groups, gk, bias4, split_all=True)
    step = query_chunk_rows(nq, b * h, _row_bytes(q, v, len(classes), gk))
    chunks = _attend_in_chunks(q, k, v, q_groups, classes, bias4, scale, mask, out, step, merge=out is not None)
    for rows, class_logits, total, _ in chunks:
        yield rows, QueryMass(*_query_mass(class_logits, total, gk))


def query_chunk_rows(n: int, rows_times_heads: int, row_bytes: int | None = None) -> int:
    """Query rows per chunk of a call with ``n`` queries per batch row and head.

    A call whose merge buffers (``row_bytes`` per query row: see :func:`_row_bytes`) come to at most
    ``WHOLE_BYTES`` runs in one chunk: chunks only cost time there. Larger calls, and callers that give no
    ``row_bytes`` (they chunk for memory), run in up to ``QUERY_CHUNKS`` chunks (a chunk's buffers then hold
    that share of the output's memory), each of at least ``MIN_CHUNK_BLOCKS`` query blocks (the CPU flash
    kernel takes smaller blocks, and runs slower, on calls of fewer than 768 query rows) and of enough query
    blocks to keep every thread busy (the kernel splits queries in blocks of ``QUERY_BLOCK`` per batch row and head); a chunk is a
    whole number of blocks."""
    if row_bytes is not None and n * row_bytes <= WHOLE_BYTES:
        return max(n, 1)
    blocks = max(MIN_CHUNK_BLOCKS, -(-BLOCKS_PER_THREAD * torch.get_num_threads() // max(1, rows_times_heads)))
    chunks = max(1, min(QUERY_CHUNKS, n // (blocks * QUERY_BLOCK)))
    step = -(-n // chunks)
    return max(1, min(n, -(-step // QUERY_BLOCK) * QUERY_BLOCK))


def _row_bytes(q: torch.Tensor, v: torch.Tensor, logits: int, weights: int) -> int:
    """Bytes per query row (over batch and heads) of the buffers a grouped call holds beyond its output while
    it merges: one class call's output, a float32 accumulator where q is not float32, ``logits`` float32 class
    log-sum-exps (kept for the mass) and ``weights`` float32 per-query weights (the per-query mass)."""
    dv = v.shape[-1]
    per_head = dv * q.element_size() + (0 if q.dtype == torch.float32 else 4 * dv) + 4 * (logits + weights)
    return q.shape[0] * q.shape[1] * per_head


def _attend_in_chunks(q, k, v, q_groups, classes, bias4, scale, mask, out, step: int, merge: bool = True,
                      may_block: bool | None = None) -> Iterator[tuple[slice, list, torch.Tensor, torch.Tensor | None]]:
    """The merge of the class calls, ``step`` query rows at a time; yields (rows, [(class groups, biased class
    log-sum-exp [B, H, r])], total log-sum-exp [B, H, r], the chunk's output rows). The output rows are written
    into ``out`` where it is given (and are then its view); else they are the chunk's own tensor, float32 or in
    q's dtype; None with ``merge=False`` (the output is not wanted: only the log-sum-exps are computed).

    The merge keeps the accumulator normalised: after each class it is the attention over the classes so far,
    and ``total`` their log-sum-exp; each further class rescales it by ``exp(total - new total)`` and adds its
    own output times ``exp(its logit - new total)`` (two passes over the chunk's output per class after the
    first, whose output becomes the accumulator).

    Memory beyond ``out``: one class call's output for a chunk, plus a float32 accumulator for the chunk
    where ``out`` is not float32 (else the accumulator is ``out``'s rows themselves; without ``out``, the
    first class call's output, or its float32 copy)."""
    b, h, nq, _ = q.shape
    acc_dtype = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    if may_block is None:  # a mask or a -inf bias: given by a prepared call (kernels.prepared), which knows it
        may_block = mask is not None or (bias4 is not None and bool(torch.isneginf(bias4).any()))
    for start in range(0, nq, step):
        rows = slice(start, min(start + step, nq))
        q_rows, groups_rows = q[:, :, rows], q_groups[rows]
        mask_rows = None if mask is None else (mask[..., rows, :] if mask.shape[-2] > 1 else mask)
        r = q_rows.shape[-2]
        dest = None if out is None else out[:, :, rows]
        acc = total = None
        class_logits = []
        for groups, keys in classes:
            class_mask = None if mask_rows is None else mask_rows[..., keys]
            out_c, lse_c = class_attention(q_rows, k[:, :, keys], v[:, :, keys], scale, class_mask)
            logit = lse_c if bias4 is None else lse_c + bias4[:, :, groups_rows, groups[0]]
            if class_mask is not None:
                hidden = torch.isneginf(class_mask).all(-1)
                logit = logit.masked_fill(hidden, float("-inf"))
                out_c.masked_fill_(hidden[..., None], 0)  # out_c is ours to overwrite
            logit = logit.expand(b, h, r)
            if total is None:  # the first class: its output is the accumulator
                total = logit
                if merge:
                    if dest is not None and dest.dtype == acc_dtype:
                        acc = dest.copy_(out_c)
                    else:
                        acc = out_c if out_c.dtype == acc_dtype else out_c.to(acc_dtype)
                    if may_block:  # rows that see no key of this class (bias -inf): weight 0
                        acc.masked_fill_(torch.isneginf(logit)[..., None], 0)
            else:
                new_total = torch.logaddexp(total, logit)
                if merge:
                    keep, add = torch.exp(total - new_total), torch.exp(logit - new_total)
                    if may_block:  # rows that see no key so far: -inf - -inf
                        keep, add = keep.nan_to_num_(0.0), add.nan_to_num_(0.0)
                    acc.mul_(keep[..., None]).addcmul_(out_c, add[..., None])
                total = new_total
            del out_c  # before the next class call allocates its own
            class_logits.append((groups, logit))
        blocked = None
        if may_block:
            blocked = torch.isneginf(total)
            if bool(blocked.any()):
                by_bias = blocked & ~_hidden_by_mask(mask_rows, blocked.shape)
                if bool(by_bias.any()):
                    raise KernelError(
                        f"{int(by_bias.sum())} query rows have every key blocked (bias -inf, with attn_mask); "
                        "each query must be able to attend to at least one key"
                    )  # the other blocked rows: the mask alone hides them, output 0 as SDPA gives
                total = total.masked_fill(blocked, 0.0)  # hidden rows: every weight 0
        if dest is not None and acc is not None and acc is not dest:
            dest.copy_(acc)
        merged = acc if dest is None else dest
        del acc
        yield rows, class_logits, total, merged


def _checked_inputs(q, k, v, q_groups, k_groups, bias, num_q_groups, num_k_groups) -> tuple[int, ...]:
    """(B, H, Nq, D, Gq, Gk) of a grouped call, after checking its shapes, groups and that no gradient is wanted."""
    b, h, nq, d = _check_qkv(q, k, v)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise KernelError(
            "grouped_attention has no backward (its fused calls' log-sum-exp is not differentiable); steered forwards "
            "that need gradients take the differentiable score path, or call kernels.scored_attention directly"
        )
    if k.shape[-2] == 0:
        raise KernelError("grouped_attention needs at least one key; k has 0")
    gq, gk = _group_counts(q_groups, k_groups, nq, k.shape[-2], bias, num_q_groups, num_k_groups)
    return b, h, nq, d, gq, gk


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise KernelError(f"{name} must have shape [B, H, N, D], got {tuple(t.shape)}")
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        raise KernelError(f"q, k, v must share [B, H]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[-1] != q.shape[-1]:
        raise KernelError(f"k's head dim must equal q's ({q.shape[-1]}), got {k.shape[-1]}")
    if v.shape[-2] != k.shape[-2]:
        raise KernelError(f"v must have as many keys as k ({k.shape[-2]}), got {v.shape[-2]}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise KernelError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    return tuple(q.shape)  # type: ignore[return-value]


def _group_counts(q_groups, k_groups, nq, nk, bias, num_q_groups, num_k_groups) -> tuple[int, int]:
    for name, g, n in (("q_groups", q_groups, nq), ("k_groups", k_groups, nk)):
        if not isinstance(g, torch.Tensor) or g.dtype != torch.long or g.shape != (n,):
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise KernelError(f"{name} must be a LongTensor of shape [{n}], got {shape}")
    gq = num_q_groups or (bias.shape[-2] if bias is not None else _count(q_groups))
    gk = num_k_groups or (bias.shape[-1] if bias is not None else _count(k_groups))
    checks = [("q_groups", q_groups, gq)]
    if k_groups is not q_groups or gk != gq:  # self-attention passes one id tensor twice: check it once
        checks.append(("k_groups", k_groups, gk))
    for name, g, count in checks:
        if g.numel():
            low, high = (int(x) for x in torch.aminmax(g))
            if low < 0 or high >= count:
                raise KernelError(f"{name} must hold group ids in [0, {count}), got range [{low}, {high}]")
    return gq, gk


def _count(groups: torch.Tensor) -> int:
    """Groups implied by the ids (1 for an empty id tensor)."""
    return int(groups.max()) + 1 if groups.numel() else 1


def _bias4(bias: torch.Tensor | None, b: int, h: int, gq: int, gk: int) -> torch.Tensor | None:
    """The bias as float32 [B|1, H|1, Gq, Gk]."""
    if bias is None:
        return None
    forms = {2: (gq, gk), 3: (b, gq, gk), 4: (b, h, gq, gk)}
    if bias.dim() not in forms or tuple(bias.shape) != forms[bias.dim()]:
        raise KernelError(f"bias must have shape [Gq, Gk], [B, Gq, Gk] or [B, H, Gq, Gk] = {list(forms.values())}, "
                         f"got {tuple(bias.shape)}")
    if bias.numel() and not float(bias.max()) < float("inf"):  # the maximum is NaN where any element is
        raise KernelError("bias must not contain NaN or +inf")
    bias = bias.float()
    if bias.dim() == 2:
        return bias[None, None]
    return bias[:, None] if bias.dim() == 3 else bias


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype, full: tuple[int, ...]) -> torch.Tensor | None:
    """The mask as an additive tensor in the query dtype, with its key dim expanded to Nk."""
    if mask is None:
        return None
    try:
        shape = torch.broadcast_shapes(mask.shape, full)
    except RuntimeError:
        shape = None
    if mask.dim() != 4 or shape != full:
        raise KernelError(f"attn_mask must be broadcastable to [B, H, Nq, Nk] = {list(full)}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    else:
        mask = mask.to(dtype)
    return mask.expand(*mask.shape[:-1], full[-1])


def _hidden_by_mask(mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """[B, H, Nq] bool: query rows that attn_mask alone hides from every key (padding used as queries).
    SDPA returns zeros for them; so does this kernel, and their mass is 0."""
    if mask is None:
        return torch.zeros(shape, dtype=torch.bool)
    return torch.isneginf(mask).all(-1).expand(shape)


def _key_classes(
    k_groups: torch.Tensor, gk: int, bias4: torch.Tensor | None, split_all: bool
) -> list[tuple[list[int], torch.Tensor | slice]]:
    """Partition the keys: one class per non-empty group, or per distinct bias column when the
    mass is not wanted (groups with identical columns need not be told apart). Contiguous classes
    are slices, so the kernel reads k and v without a copy."""
    counts = torch.bincount(k_groups, minlength=gk).tolist()
    present = [g for g in range(gk) if counts[g]]
    if split_all:
        members = [[g] for g in present]
    elif bias4 is None:
        members = [present]
    else:
        by_column: dict[bytes, list[int]] = {}
        columns = bias4[..., present].movedim(-1, 0).contiguous().cpu()
        for g, column in zip(present, columns):
            by_column.setdefault(column.numpy().tobytes(), []).append(g)
        members = list(by_column.values())
    ends = list(itertools.accumulate(counts))
    ordered = k_groups.numel() < 2 or bool((k_groups[1:] >= k_groups[:-1]).all())  # each group's keys contiguous
    classes = []
    for groups in members:
        if len(members) == 1:  # one class: every key
            keys = slice(0, k_groups.numel())
        elif ordered and groups == present[present.index(groups[0]):present.index(groups[-1]) + 1]:
            keys = slice(ends[groups[0]] - counts[groups[0]], ends[groups[-1]])  # consecutive groups: one span
        else:
            index = torch.nonzero(torch.isin(k_groups, torch.tensor(groups, device=k_groups.device))).flatten()
            first, last = int(index[0]), int(index[-1])
            keys = slice(first, last + 1) if last - first + 1 == index.numel() else index
        classes.append((groups, keys))
    return classes


def _add_mass(mass: torch.Tensor, class_logits, total: torch.Tensor, q_groups: torch.Tensor) -> None:
    """Add to ``mass`` [B, H, Gq, Gk] the weight each query of a chunk puts on each key group, summed per query group."""
    for (group,), logit in class_logits:
        mass[..., group].index_add_(-1, q_groups, torch.exp(logit - total).float())


class QueryMass(NamedTuple):
    """The per-query mass of :func:`grouped_attention` (``per_query=True``), float32."""

    weights: torch.Tensor  # [B, H, Nq, Gk]: each query's total attention weight on each key group
    lse: torch.Tensor  # [B, H, Nq]: log-sum-exp of each query's biased, masked logits (0 for hidden rows)


def _query_mass(class_logits, total: torch.Tensor, gk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [B, H, r, Gk], lse [B, H, r]) of a chunk: each query's weight on each key group (0 on groups without keys)."""
    weights = torch.zeros(*total.shape, gk, dtype=torch.float32, device=total.device)
    for (group,), logit in class_logits:
        weights[..., group] = torch.exp(logit - total).float()
    return weights, total.float()
