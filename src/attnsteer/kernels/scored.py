"""Exact attention with an elementwise score function, in query chunks: never an N x N matrix.

``scored_attention`` computes ``softmax(score_fn(q k^T * scale, q_idx) + attn_mask) @ v`` for
``chunk`` query rows at a time, in float32 (float64 for float64 inputs), so memory is
O(B x H x chunk x Nk) and autograd works through it. It serves rules that are not constant per
group pair (FlexAttention's ``score_mod`` contract); with ``groups`` it also returns the
attention mass per (query group, key group), like the grouped kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import SteeringError

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CHUNK_ELEMENTS = 1 << 24  # logits held at once (64 MB in float32)


def scored_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score_fn: ScoreFn,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    num_groups: int | None = None,
    return_mass: bool = False,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out [B, H, Nq, Dv] in q's dtype, mass [B, H, G, G] float32 or None).

    ``score_fn(s, q_index)`` receives the scaled logits ``s`` [B, H, c, Nk] of query rows
    ``q_index`` [c] and returns new logits of the same shape. A row that ``attn_mask`` alone hides
    from every key gets output 0 (as SDPA gives); a row the score function leaves without any key
    raises. ``groups`` [N] (with ``num_groups``) is the group of every token, for the mass.
    """
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    scale = d**-0.5 if scale is None else float(scale)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    chunk = chunk or max(1, CHUNK_ELEMENTS // max(1, b * h * nk))
    kt, vw = k.to(work).transpose(-1, -2), v.to(work)
    if return_mass:
        onehot = torch.nn.functional.one_hot(groups, num_groups).to(work)  # [N, G]
        mass = torch.zeros(b, h, num_groups, num_groups, dtype=work, device=q.device)
    outs = []
    for start in range(0, nq, chunk):
        q_index = torch.arange(start, min(start + chunk, nq), device=q.device)
        s = score_fn((q[:, :, start : start + chunk].to(work) @ kt) * scale, q_index)
        hidden = None
        if attn_mask is not None:
            rows = attn_mask[..., start : start + chunk, :] if attn_mask.shape[-2] > 1 else attn_mask
            mask = _additive(rows, work)
            hidden = torch.isneginf(mask).all(-1).expand(b, h, -1)
            s = s + mask
        blocked = torch.isneginf(s).all(-1)
        if hidden is not None:
            blocked = blocked & ~hidden
        if bool(blocked.any()):
            raise SteeringError(
                f"{int(blocked.sum())} query rows have every key blocked (-inf) by the active rules; each query must "
                "be able to attend to at least one key"
            )
        p = torch.softmax(s, dim=-1)
        if hidden is not None:
            p = p.masked_fill(hidden[..., None], 0.0)
        outs.append(p @ vw)
        if return_mass:
            mass = mass.index_add(2, groups[q_index], p @ onehot)
    out = torch.cat(outs, dim=-2).to(q.dtype)
    if not return_mass:
        return out, None
    counts = torch.bincount(groups, minlength=num_groups).clamp_min(1).to(work)
    return out, (mass / counts[:, None]).float()


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)
