"""Exact attention decomposed into blocks of query rows x key classes (FlexAttention's BlockMask, on fused
CPU/GPU kernels).

The caller cuts the queries into blocks of rows and, per block, the keys into classes on which every rule
is a constant logit bias (per batch row, head and, for per-query values, query row) plus, where a rule is
not constant over the block (a position predicate's edge, a score function's pairs), a set of *mixed* keys.
Each class runs one fused call that returns its log-sum-exp (:func:`~attnsteer.kernels.backends.class_attention`:
attnsteer's own, or the user's backend the runtime put in place); the mixed keys run the elementwise score
function on ``rows x mixed`` logits only; keys a rule blocks (bias ``-inf``) for the whole block are in no
class and cost nothing. The parts are merged by log-sum-exp, as in :mod:`attnsteer.kernels.grouped`:

    out = sum_p exp(logit_p - total) * out_p,   logit_p = lse_p + bias_p,   total = logsumexp_p(logit_p)

so the result is ``softmax(score_fn(q k^T * scale) + attn_mask) @ v`` exactly, with memory O(rows x Nk)
per block, never N x N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ..errors import KernelError
from .backends import class_attention
from .grouped import additive_mask

BlockScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class KeyClass(NamedTuple):
    """Keys on which every rule adds a constant for a block's rows: ``keys`` (a slice or LongTensor of positions,
    never empty) and ``bias`` (a float tensor broadcastable to [B, H, rows]; None for 0)."""

    keys: slice | torch.Tensor
    bias: torch.Tensor | None


class QueryBlock(NamedTuple):
    """One block of query ``rows`` (a slice, or a sorted LongTensor of positions: gathered rows): its fused key
    ``classes`` and its ``mixed`` keys (LongTensor, or None) that run the elementwise score function. Keys in
    neither are blocked for every row of the block."""

    rows: slice | torch.Tensor
    classes: tuple[KeyClass, ...]
    mixed: torch.Tensor | None


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocks: Sequence[QueryBlock],
    score_fn: BlockScoreFn | None = None,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(logits + attn_mask) @ v`` [B, H, Nq, Dv] in q's dtype, the logits given block by block: a class's
    are ``q k^T * scale + bias``, the mixed keys' ``score_fn(q k^T * scale, q_index, k_index)``.

    ``blocks`` must tile the query rows (slices in order; blocks of gathered rows cover each row once). A row that
    ``attn_mask`` alone hides from every key gets output 0 (as SDPA gives); a row the rules leave without any key
    raises."""
    b, h, nq, d = q.shape
    nk, dv = k.shape[-2], v.shape[-1]
    _check_tiling(blocks, nq)
    if any(block.mixed is not None for block in blocks) and score_fn is None:
        raise KernelError("blocked_attention: blocks with mixed keys need a score_fn")
    scale = d**-0.5 if scale is None else float(scale)
    work = torch.promote_types(q.dtype, torch.float32)
    if attn_mask is not None and attn_mask.dim() < 4:  # broadcastable masks of fewer dims, as SDPA takes them
        attn_mask = attn_mask[(None,) * (4 - attn_mask.dim())]
    mask = additive_mask(attn_mask, q.dtype, (b, h, nq, nk))
    out = torch.empty(b, h, nq, dv, dtype=q.dtype, device=q.device)
    gathered: tuple = (None, None, None)  # (index tensor, its keys, its values): blocks that share a gathered key class
    # (the same tensor, as runtime.block_plan hands out) copy its keys once
    for block in blocks:
        rows = block.rows
        q_rows = q[:, :, rows]
        r = q_rows.shape[-2]
        mask_rows = None if mask is None else (mask[..., rows, :] if mask.shape[-2] > 1 else mask)
        parts = []
        for cls in block.classes:
            class_mask = None if mask_rows is None else mask_rows[..., cls.keys]
            if isinstance(cls.keys, slice):
                k_c, v_c = k[:, :, cls.keys], v[:, :, cls.keys]
            else:
                if gathered[0] is not cls.keys:
                    gathered = (cls.keys, k[:, :, cls.keys], v[:, :, cls.keys])
                k_c, v_c = gathered[1], gathered[2]
            out_c, lse_c = class_attention(q_rows, k_c, v_c, scale, class_mask)
            logit = lse_c.to(work) if cls.bias is None else lse_c.to(work) + cls.bias.to(lse_c.device, work)
            if class_mask is not None:  # the CPU kernel reports lse 0 (and any output) for rows whose keys are all masked
                hidden = torch.isneginf(class_mask).all(-1)
                logit = logit.masked_fill(hidden, float("-inf"))
                out_c = out_c.masked_fill(hidden[..., None], 0)
            parts.append((out_c, logit.expand(b, h, r)))
        if block.mixed is not None:
            q_index = torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
            parts.append(_mixed_part(q_rows, k, v, q_index, block.mixed, score_fn, scale, mask_rows, work))
        out[:, :, rows] = _merge(parts, (b, h, r, dv), work, mask_rows, q.device).to(q.dtype)
    return out


def _check_tiling(blocks: Sequence[QueryBlock], nq: int) -> None:
    """Every query row in exactly one block (blocks in any order: slices, or gathered rows)."""
    runs = [block.rows for block in blocks if isinstance(block.rows, slice)]
    for rows in runs:
        if rows.step not in (None, 1) or not 0 <= rows.start < rows.stop <= nq:
            raise KernelError(f"blocked_attention: block rows {rows} are not a non-empty run within the call's "
                              f"{nq} query rows")
    if len(runs) == len(blocks):  # slices only (the usual case): sorted runs must meet end to start, with no tensor
        end = 0
        for rows in sorted(runs, key=lambda r: r.start):
            if rows.start != end:
                break
            end = rows.stop
        else:
            if end == nq:
                return
    covered = torch.zeros(nq, dtype=torch.long)
    for block in blocks:
        rows = block.rows
        if not isinstance(rows, slice):
            if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= nq:
                raise KernelError(f"blocked_attention: gathered block rows must be positions in [0, {nq}), non-empty")
            rows = rows.cpu()
        covered[rows] += 1
    missing, repeated = int((covered == 0).sum()), int((covered > 1).sum())
    if missing or repeated:
        raise KernelError(f"blocked_attention: blocks must tile the query rows, each of the {nq} in exactly one "
                          f"block; {missing} are in none, {repeated} in several")


def _mixed_part(q_rows, k, v, q_index: torch.Tensor, keys: torch.Tensor, score_fn: BlockScoreFn, scale: float,
                mask_rows, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [B, H, r, Dv], log-sum-exp [B, H, r]) of the rows' attention restricted to the mixed keys, with the
    score function applied to their logits (``-inf`` log-sum-exp and output 0 where every mixed key is blocked)."""
    keys = keys.to(q_rows.device)
    s = (q_rows.to(work) @ k[:, :, keys].to(work).transpose(-1, -2)) * scale
    s = score_fn(s, q_index.to(q_rows.device), keys)
    if mask_rows is not None:
        s = s + mask_rows[..., keys].to(work)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.masked_fill(torch.isneginf(lse), 0.0)[..., None])
    return p @ v[:, :, keys].to(work), lse


def _merge(parts, shape: tuple[int, int, int, int], work: torch.dtype, mask_rows, device) -> torch.Tensor:
    """The block's output rows [B, H, r, Dv] (in ``work``, or the single part's own dtype) from its parts' (output,
    logit) by log-sum-exp."""
    b, h, r, dv = shape
    if len(parts) > 1:
        total = torch.logsumexp(torch.stack([logit for _, logit in parts]), dim=0)
    elif parts:
        total = parts[0][1]
    else:
        total = torch.full((b, h, r), float("-inf"), dtype=work, device=device)
    blocked = torch.isneginf(total)
    if bool(blocked.any()):
        hidden = torch.isneginf(mask_rows).all(-1).expand(b, h, r) if mask_rows is not None else torch.zeros_like(blocked)
        by_rules = blocked & ~hidden
        if bool(by_rules.any()):
            raise KernelError(
                f"{int(by_rules.sum())} query rows have every key blocked (-inf) by the active rules; each query "
                "must be able to attend to at least one key"
            )  # the others: the mask alone hides them, output 0 as SDPA gives
        total = total.masked_fill(blocked, 0.0)
    if len(parts) == 1:  # one part: its output rows are the result (0 where the mask hides a row)
        return parts[0][0].to(work).masked_fill(blocked[..., None], 0.0) if bool(blocked.any()) else parts[0][0]
    acc = torch.zeros(shape, dtype=work, device=device)
    for out_p, logit in parts:
        weight = torch.exp(logit - total)  # exp(-inf) = 0 for rows that see none of this part's keys
        acc.addcmul_(out_p.to(work), weight[..., None])
    return acc
