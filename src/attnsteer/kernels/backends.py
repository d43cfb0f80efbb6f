"""One fused attention call that also returns the log-sum-exp of each query row.

``attention_with_lse(q, k, v, scale, mask)`` picks the fastest fused op of the device that
supports the inputs: the flash kernel on CPU; on CUDA the kernel plain SDPA would choose (flash,
memory-efficient or cuDNN); anything else falls back to a math path chunked over queries (memory
O(chunk x Nk), never Nq x Nk).

``class_attention`` is what the grouped kernel calls per key class: ``attention_with_lse``, or the kernel a
caller put in place for the duration of a block with :func:`class_kernel` (the runtime puts the user's own
attention backend there, so that a steered call runs on it).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch.nn.attention import SDPBackend

QUERY_CHUNK = 1024

LseKernel = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (q, k, v, scale, mask) -> (out, lse), as attention_with_lse
_CLASS_KERNEL: contextvars.ContextVar[LseKernel | None] = contextvars.ContextVar("attnsteer_class_kernel", default=None)


@contextlib.contextmanager
def class_kernel(kernel: LseKernel | None) -> Iterator[None]:
    """Inside the block, :func:`class_attention` runs ``kernel`` (None: attnsteer's own choice)."""
    token = _CLASS_KERNEL.set(kernel)
    try:
        yield
    finally:
        _CLASS_KERNEL.reset(token)


def own_class_kernel() -> bool:
    """Whether :func:`class_attention` runs attnsteer's own choice (no kernel put in place by :func:`class_kernel`)."""
    return _CLASS_KERNEL.get() is None


def class_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_with_lse`, or the kernel :func:`class_kernel` put in place (same contract)."""
    kernel = _CLASS_KERNEL.get()
    return attention_with_lse(q, k, v, scale, mask) if kernel is None else kernel(q, k, v, scale, mask)


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Nq, Dv] in q's dtype, lse [B, H, Nq] float32, float64 for float64 q) of softmax(q k^T * scale + mask) v.

    ``mask`` is additive in q's dtype, broadcastable to [B, H, Nq, Nk]. Rows whose keys are all
    masked come back with arbitrary output; the caller tells them from the mask.
    """
    if q.device.type == "cpu":
        return _cpu_flash(q, k, v, scale, mask)
    if q.device.type == "cuda":
        return _cuda_fused(q, k, v, scale, mask)
    return _chunked_math(q, k, v, scale, mask)


def _cpu_flash(q, k, v, scale, mask):
    """aten's CPU flash kernel; it needs equal head sizes, so the narrower of qk / v is zero-padded."""
    d, dv = q.shape[-1], v.shape[-1]
    if dv < d:
        v = torch.nn.functional.pad(v, (0, d - dv))
    elif d < dv:
        q, k = (torch.nn.functional.pad(t, (0, dv - d)) for t in (q, k))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask, scale=scale)
    return out[..., :dv], lse.to(torch.promote_types(lse.dtype, torch.float32))


def _cuda_fused(q, k, v, scale, mask):
    """The fused kernel plain SDPA would pick for these inputs (``torch._fused_sdp_choice``, which honours
    ``torch.nn.attention.sdpa_kernel``): flash, memory-efficient or cuDNN, each in its variant that
    returns the log-sum-exp; the chunked math path where SDPA would take math.

    A fused op that refuses the inputs (head size, alignment, GPU generation) hands over to the
    memory-efficient kernel, then to the chunked math path; running out of memory is re-raised.
    """
    nq = q.shape[-2]
    backend = _sdpa_choice(q, k, v, mask, scale)
    if backend not in _FUSED:
        return _chunked_math(q, k, v, scale, mask)
    for name in dict.fromkeys((backend, SDPBackend.EFFICIENT_ATTENTION)):
        try:
            out, lse = _FUSED[name](q, k, v, scale, mask)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            continue
        return out, lse.reshape(*q.shape[:2], -1)[..., :nq].float()  # efficient pads rows to 32; cuDNN may add a dim
    return _chunked_math(q, k, v, scale, mask)


def _sdpa_choice(q, k, v, mask, scale) -> SDPBackend:
    """The backend ``F.scaled_dot_product_attention`` would run these inputs on (ERROR where the backends
    that ``sdpa_kernel`` leaves enabled all refuse them: SDPA would raise, attnsteer takes the math path)."""
    try:
        choice = torch._fused_sdp_choice(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)
    except RuntimeError:
        return SDPBackend.ERROR
    return SDPBackend(choice)


def _flash(q, k, v, scale, mask):
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)[:2]


def _efficient(q, k, v, scale, mask):
    bias = None if mask is None else _efficient_bias(mask, q, k)
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, compute_log_sumexp=True, scale=scale)[:2]


def _cudnn(q, k, v, scale, mask):
    bias = None if mask is None else mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, bias, True, scale=scale)[:2]


_FUSED = {SDPBackend.FLASH_ATTENTION: _flash, SDPBackend.EFFICIENT_ATTENTION: _efficient,
          SDPBackend.CUDNN_ATTENTION: _cudnn}


def _efficient_bias(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The mask as the efficient kernel wants its bias: q's dtype, rows aligned to 16 elements (as
    SDPA's own ``pad_bias`` does), broadcast dimensions left at stride 0."""
    nk = k.shape[-2]
    aligned = torch.zeros(*mask.shape[:-1], nk + (-nk) % 16, dtype=q.dtype, device=q.device)[..., :nk]
    aligned.copy_(mask)
    return aligned.expand(q.shape[0], q.shape[1], q.shape[2], nk)


def _chunked_math(q, k, v, scale, mask):
    """Plain math, QUERY_CHUNK query rows at a time, accumulated in float32."""
    outs, lses = [], []
    kt = k.float().transpose(-1, -2)
    for start in range(0, q.shape[-2], QUERY_CHUNK):
        stop = start + QUERY_CHUNK
        logits = (q[..., start:stop, :].float() @ kt) * scale
        if mask is not None:
            rows = mask[..., start:stop, :] if mask.shape[-2] > 1 else mask
            logits = logits + rows.float()
        lse = torch.logsumexp(logits, dim=-1)
        weights = torch.exp(logits - lse[..., None].clamp_min(torch.finfo(torch.float32).min))
        outs.append((weights @ v.float()).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)
