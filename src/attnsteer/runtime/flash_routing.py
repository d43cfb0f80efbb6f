"""flash-attn called directly: while a session is attached, its public functions called from inside a steered
attention module reach attnsteer as the SDPA call they compute.

Models outside diffusers (the authors' Wan and HunyuanVideo code, research forks) call ``flash_attn_func`` /
``flash_attn_varlen_func`` (FlashAttention-2's ``flash_attn``, FlashAttention-3's ``flash_attn_interface``) on
q, k, v in [B, L, H, D] (varlen: [total, H, D] with ``cu_seqlens``). During a session those functions are
replaced by routers, in the flash module and wherever a loaded module bound them by name
(``from flash_attn import flash_attn_func``), and put back when the last session ends, also after an
exception. A router outside a steered module forward calls flash-attn itself; inside one it calls
``F.scaled_dot_product_attention`` on the same q, k, v (heads first, GQA heads repeated, varlen sequences as
batch rows), which the module's interceptor hands to its :class:`~attnsteer.runtime.module_call.ModuleCall`:
steered and recorded calls run attnsteer's exact kernel, exactly as for a model that calls SDPA.

What stays global is this module's :data:`ROUTING`: the installed routers and the count of attached
controllers, and a context variable saying whether the running code is inside a steered module forward.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SteeringError
from . import backend_calls
from .rebinding import Rebinding

# module -> function -> its leading positional parameters (FlashAttention-3 has no dropout_p); read-only
FLASH_SIGNATURES: Mapping[str, Mapping[str, tuple[str, ...]]] = types.MappingProxyType({
    "flash_attn": {
        "flash_attn_func": ("q", "k", "v", "dropout_p", "softmax_scale", "causal"),
        "flash_attn_varlen_func": ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k",
                                   "dropout_p", "softmax_scale", "causal"),
    },
    "flash_attn_interface": {
        "flash_attn_func": ("q", "k", "v", "softmax_scale", "causal"),
        "flash_attn_varlen_func": ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k",
                                   "seqused_q", "seqused_k", "softmax_scale", "causal"),
    },
})

_INSIDE_STEERED_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar("attnsteer_flash", default=None)
_UNSTEERED: contextvars.ContextVar[Callable[[], torch.Tensor] | None] = contextvars.ContextVar(
    "attnsteer_flash_unsteered", default=None)  # the routed flash call itself, [B, H, L, D], while it is routed


class FlashRouting(Rebinding):
    """The routers of the loaded flash-attn modules while at least one controller is attached."""

    def routers(self) -> dict[int, tuple[Callable, Callable]]:
        found: dict[int, tuple[Callable, Callable]] = {}
        for module_name, signatures in FLASH_SIGNATURES.items():
            module = sys.modules.get(module_name)
            for name, parameters in signatures.items():
                function = getattr(module, name, None) if module is not None else None
                if callable(function) and not getattr(function, "_attnsteer_router", False):
                    found[id(function)] = (function, _router(function, parameters, varlen="varlen" in name))
        return found


ROUTING = FlashRouting()


@contextlib.contextmanager
def steered_forward(where: str) -> Iterator[None]:
    """Mark the running code as inside the forward of a steered module (``where`` names it for errors)."""
    token = _INSIDE_STEERED_CALL.set(where)
    try:
        yield
    finally:
        _INSIDE_STEERED_CALL.reset(token)


def _router(original: Callable, parameters: tuple[str, ...], varlen: bool) -> Callable:
    """flash-attn's ``original`` outside a steered module forward; SDPA on the same q, k, v inside one."""

    @functools.wraps(original)
    def route(*args: Any, **kwargs: Any) -> Any:
        where = _INSIDE_STEERED_CALL.get()
        if where is None:
            return original(*args, **kwargs)
        values = _arguments(parameters, args, kwargs, where)
        token = _UNSTEERED.set(None if varlen else lambda: original(*args, **kwargs).transpose(1, 2))
        try:
            return _varlen_as_sdpa(where, values) if varlen else _flash_as_sdpa(values)
        finally:
            _UNSTEERED.reset(token)

    route._attnsteer_router = True  # type: ignore[attr-defined]
    return route


def unsteered(args: tuple, kwargs: dict) -> torch.Tensor:
    """An SDPA call that no rule changes: the routed kernel itself when the call came from a router (flash-attn, a
    diffusers attention backend: bit-identical to an unsteered run), else SDPA."""
    out = routed_output()
    if out is not None:
        return out
    backend_calls.ran_on_backend()  # a native-family dispatcher backend: SDPA is the user's backend
    return F.scaled_dot_product_attention(*args, **kwargs)


def routed_output() -> torch.Tensor | None:
    """The call being routed, computed by the user's own kernel as it was made ([B, H, L, D]); None where no router
    answers it (a model that calls SDPA, a varlen flash-attn call)."""
    routed_call = _UNSTEERED.get()
    if routed_call is None:
        return None
    backend_calls.ran_on_backend()
    return routed_call()


def steered_subject() -> str | None:
    """Who an error is about while the running code is inside a steered module forward, else None."""
    return _INSIDE_STEERED_CALL.get()


@contextlib.contextmanager
def routed(call: Callable[[], torch.Tensor] | None) -> Iterator[None]:
    """While a router answers a call through SDPA: ``call`` computes it with the user's own kernel ([B, H, L, D]),
    which :func:`unsteered` runs when no rule changes the call."""
    token = _UNSTEERED.set(call)
    try:
        yield
    finally:
        _UNSTEERED.reset(token)


def _arguments(names: tuple[str, ...], args: tuple, kwargs: dict, where: str) -> dict[str, Any]:
    """flash-attn's arguments by name; refuse those attnsteer cannot reproduce exactly with SDPA."""
    values = {"dropout_p": 0.0, "softmax_scale": None, "causal": False, **dict(zip(names, args)), **kwargs}
    unsupported = {name: values.get(name) for name in ("window_size", "softcap", "alibi_slopes", "return_attn_probs",
                                                       "seqused_q", "seqused_k", "block_table")
                   if not _is_default(values.get(name))}
    if values["dropout_p"] or values["causal"] or unsupported:
        raise SteeringError(
            f"{where}: a flash-attn call with dropout_p={values['dropout_p']}, causal={values['causal']} "
            f"{unsupported or ''} cannot be steered exactly; attnsteer steers full, non-causal attention without "
            "dropout (call it with return_attn_probs=False and the defaults of the other options)")
    return values


def _is_default(value: Any) -> bool:
    return value is None or (not isinstance(value, torch.Tensor) and value in (False, 0.0, (-1, -1), [-1, -1]))


def _heads_first(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """[B, L, H, D] -> [B, H, L, D], with grouped key/value heads repeated to the query heads (as flash-attn does)."""
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _flash_as_sdpa(values: dict[str, Any]) -> torch.Tensor:
    q, k, v = _heads_first(values["q"], values["k"], values["v"])
    out = F.scaled_dot_product_attention(q, k, v, scale=values["softmax_scale"])
    return out.transpose(1, 2).contiguous()


def _varlen_as_sdpa(where: str, values: dict[str, Any]) -> torch.Tensor:
    """Packed sequences as batch rows; they must all have the same length (one token layout per call)."""
    q, k, v = values["q"], values["k"], values["v"]
    lengths_q = torch.diff(values["cu_seqlens_q"].to("cpu", torch.long)).tolist()
    lengths_k = torch.diff(values["cu_seqlens_k"].to("cpu", torch.long)).tolist()
    if len(set(lengths_q)) != 1 or len(set(lengths_k)) != 1 or len(lengths_q) != len(lengths_k):
        raise SteeringError(
            f"{where}: a flash_attn_varlen_func call packs sequences of different lengths (queries {lengths_q}, keys "
            f"{lengths_k}); attnsteer steers packed sequences of one length, each a batch row of one token layout")
    rows = len(lengths_q)
    q, k, v = (t.reshape(rows, t.shape[0] // rows, *t.shape[1:]) for t in (q, k, v))
    qh, kh, vh = _heads_first(q, k, v)
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=values["softmax_scale"])
    return out.transpose(1, 2).reshape(-1, out.shape[1], out.shape[-1]).contiguous()
