"""The dense reference of :func:`grouped_attention`, for tests only: it materialises Nq x Nk.

Written from the definition in float64, sharing no code with the fused path.
"""

from __future__ import annotations

import torch


def dense_attention(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as ``grouped_attention``, computed densely."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    gq = num_q_groups or (bias.shape[-2] if bias is not None else int(q_groups.max()) + 1)
    gk = num_k_groups or (bias.shape[-1] if bias is not None else int(k_groups.max()) + 1)
    if bias is not None:
        full = bias.double()
        if full.dim() == 3:
            full = full[:, None]
        logits = logits + full[..., q_groups, :][..., k_groups]
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask.double()
    hidden = torch.zeros(logits.shape[:-1], dtype=torch.bool)
    if attn_mask is not None:  # rows the mask alone hides from every key: output 0 (as SDPA), mass 0
        masked = torch.zeros_like(logits)
        masked = masked.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else masked + attn_mask.double()
        hidden = torch.isneginf(masked).all(-1)
    p = torch.softmax(logits, dim=-1).masked_fill(hidden[..., None], 0.0)
    out = (p @ v.double()).to(q.dtype)
    if not return_mass:
        return out, None
    key_onehot = torch.nn.functional.one_hot(k_groups, gk).double()
    query_onehot = torch.nn.functional.one_hot(q_groups, gq).double()
    per_query = p @ key_onehot  # [B, H, Nq, Gk]
    summed = query_onehot.transpose(0, 1) @ per_query  # [B, H, Gq, Gk]
    mass = summed / query_onehot.sum(0).clamp_min(1)[:, None]
    return out, mass.float()
