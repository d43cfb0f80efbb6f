"""Exact attention with an elementwise score function, in query chunks: never an N x N matrix.

``scored_attention`` computes ``softmax(score_fn(q k^T * scale, q_idx) + attn_mask) @ v`` for a
chunk of query rows at a time, in float32 (float64 for float64 inputs), so memory is
O(B x H x chunk x Nk) and autograd works through it. It serves rules that are not constant per
group pair (FlexAttention's ``score_mod`` contract); with ``groups`` it also returns the attention
mass per (query group, key group), like the grouped kernel.

Large calls run each chunk through ``torch.compile`` (one fused pass for the score function and
the softmax instead of one memory pass per elementwise op: about 2.5x faster on CPU); it is
compiled once per score function and chunk shape, and falls back to eager where it cannot compile.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..errors import KernelError

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CHUNK_ELEMENTS = 1 << 22  # logits held at once (16 MB in float32; larger chunks fall out of cache)
COMPILE_MIN_LOGITS = 1 << 26  # compile the chunk step for calls with at least this many logits ("auto")


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
    compile: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out [B, H, Nq, Dv] in q's dtype, mass [B, H, G, G] float32 or None).

    ``score_fn(s, q_index)`` receives the scaled logits ``s`` [B, H, c, Nk] of query rows
    ``q_index`` [c] and returns new logits of the same shape. A row that ``attn_mask`` alone hides
    from every key gets output 0 (as SDPA gives); a row the score function leaves without any key
    raises. ``groups`` [N] (with ``num_groups``) is the group of every token, for the mass.
    ``compile``: True, False, or None for automatic (large calls without autograd).
    """
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    scale = d**-0.5 if scale is None else float(scale)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    chunk = chunk or max(1, CHUNK_ELEMENTS // max(1, b * h * nk))
    kt, vw = k.to(work).transpose(-1, -2).contiguous(), v.to(work)  # a contiguous K^T: 3x faster matmuls
    onehot = torch.nn.functional.one_hot(groups, num_groups).to(work) if return_mass else None
    step = _chunk_step
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if compile or (compile is None and not grad and b * h * nq * nk >= COMPILE_MIN_LOGITS):
        step = _compiled_step()
    out = torch.empty(b, h, nq, v.shape[-1], dtype=q.dtype, device=q.device)
    mass = None
    for start in range(0, nq, chunk):
        q_index = torch.arange(start, min(start + chunk, nq), device=q.device)
        rows = None
        if attn_mask is not None:
            rows = attn_mask[..., start : start + chunk, :] if attn_mask.shape[-2] > 1 else attn_mask
        rows_out, blocked, part = step(score_fn, q[:, :, start : start + chunk].to(work), kt, vw, q_index, rows,
                                       onehot, scale)
        if bool(blocked.any()):
            raise KernelError(
                f"{int(blocked.sum())} query rows have every key blocked (-inf) by the active rules; each query "
                "must be able to attend to at least one key"
            )
        out[:, :, start : start + chunk] = rows_out
        if return_mass:
            part = torch.zeros(b, h, num_groups, num_groups, dtype=work, device=q.device).index_add(
                2, groups[q_index], part
            )
            mass = part if mass is None else mass + part
    if not return_mass:
        return out, None
    counts = torch.bincount(groups, minlength=num_groups).clamp_min(1).to(work)
    return out, (mass / counts[:, None]).float()


def _chunk_step(score_fn: ScoreFn, qc, kt, vw, q_index, mask, onehot, scale):
    """One chunk: (output rows, rows blocked by the rules, per-query mass on each key group or None)."""
    s = score_fn((qc @ kt) * scale, q_index)
    hidden = None
    if mask is not None:
        mask = torch.zeros(mask.shape, dtype=s.dtype, device=s.device).masked_fill(~mask, float("-inf")) \
            if mask.dtype == torch.bool else mask.to(s.dtype)
        hidden = torch.isneginf(mask).all(-1)
        s = s + mask
    blocked = torch.isneginf(s).all(-1)
    p = torch.softmax(s, dim=-1)
    if hidden is not None:
        blocked = blocked & ~hidden
        p = p.masked_fill(hidden[..., None], 0.0)
    return p @ vw, blocked, (None if onehot is None else p @ onehot)


_COMPILED: list[Callable] = []


def _compiled_step() -> Callable:
    """``_chunk_step`` under torch.compile, or the eager step (with one warning) where it cannot compile."""
    if not _COMPILED:
        compiled = torch.compile(_chunk_step, dynamic=False)

        def step(*args):
            try:
                return compiled(*args)
            except Exception as exc:  # no C compiler, an unsupported op in a user score function, ...
                warnings.warn(f"attnsteer: the score path runs eagerly, torch.compile failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120]})", RuntimeWarning, stacklevel=3)
                _COMPILED[0] = _chunk_step
                return _chunk_step(*args)

        _COMPILED.append(step)
    return _COMPILED[0]
