"""A stand-in for flash-attn on machines without it: ``flash_attn_func`` and ``flash_attn_varlen_func`` with
FlashAttention-2's signatures and layouts, computed in torch (exact softmax; ``return_attn_probs=True`` returns
``(out, softmax_lse, None)``). :func:`installed` puts it in ``sys.modules`` as ``flash_attn`` for the duration of a
test, so that code written against flash-attn runs and attnsteer's routing of it can be checked on a CPU."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

import torch


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                    softmax_scale: float | None = None, causal: bool = False, window_size: tuple = (-1, -1),
                    softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                    return_attn_probs: bool = False):
    """Softmax attention of q [B, Lq, H, D] over k, v [B, Lk, Hk, D] (Hk divides H), in q's dtype."""
    if dropout_p or causal or window_size != (-1, -1) or softcap or alibi_slopes is not None:
        raise NotImplementedError("the stand-in computes full, non-causal attention without dropout only")
    groups = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    lse = torch.logsumexp(logits, dim=-1)  # [B, H, Lq]
    out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(logits - lse[..., None]), v.double()).to(q.dtype)
    return (out, lse.float(), None) if return_attn_probs else out


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                           softmax_scale: float | None = None, causal: bool = False, **options):
    """Packed sequences: q [total_q, H, D], k, v [total_k, Hk, D], sequence i at ``cu_seqlens[i]:cu_seqlens[i+1]``."""
    outs = []
    for i in range(len(cu_seqlens_q) - 1):
        sq = slice(int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]))
        sk = slice(int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1]))
        outs.append(flash_attn_func(q[None, sq], k[None, sk], v[None, sk], dropout_p, softmax_scale, causal,
                                    **options)[0])
    return torch.cat(outs)


@contextlib.contextmanager
def installed(name: str = "flash_attn") -> Iterator[types.ModuleType]:
    """This stand-in as ``sys.modules[name]`` inside the block; whatever was there before comes back after."""
    module = types.ModuleType(name, __doc__)
    module.flash_attn_func = flash_attn_func  # type: ignore[attr-defined]
    module.flash_attn_varlen_func = flash_attn_varlen_func  # type: ignore[attr-defined]
    before = sys.modules.get(name)
    sys.modules[name] = module
    try:
        yield module
    finally:
        if before is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = before
