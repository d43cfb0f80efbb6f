"""diffusers' attention dispatcher: while a session is attached, ``dispatch_attention_fn`` called from inside a
steered attention module reaches attnsteer with its backend name, whatever the backend.

diffusers' processors (Wan, LTX, HunyuanVideo, ...) call ``dispatch_attention_fn(query, key, value, ...,
backend=..., parallel_config=...)`` on q, k, v in [B, N, H, D]; only the ``native`` family of backends reaches
``F.scaled_dot_product_attention``. During a session the function is replaced by a router, in
``diffusers.models.attention_dispatch`` and wherever a loaded module bound it by name (``from ..attention_dispatch
import dispatch_attention_fn``), and put back when the last session ends, also after an exception. The router
is built once per dispatcher function, so compiled graphs that traced it are reused by later sessions.

- Outside a steered module forward, and while dynamo traces: the dispatcher itself.
- Native family: the dispatcher itself (it reaches SDPA, which the module's interceptor answers: around the whole
  module forward, or around this call alone once the module is known to call SDPA only through the dispatcher,
  see :mod:`attnsteer.runtime.interception`).
- Any other backend (``flex``, ``flash``, ``sage``, a registered one): ``F.scaled_dot_product_attention`` on the
  same q, k, v (heads first, grouped key/value heads repeated, a [B, N] key mask broadcast as the native backend
  does), which the interceptor hands to the module's :class:`~attnsteer.runtime.module_call.ModuleCall`: steered
  and recorded calls run on the user's backend where it can compute them exactly, else attnsteer's exact kernels
  (:mod:`attnsteer.runtime.backend_calls`; docs/backends.md has the table); a call no rule changes runs the
  user's backend itself (:func:`attnsteer.runtime.flash_routing.unsteered`), bit-identical to an unsteered run.

:func:`current_backend` names the backend of the call being answered, for the session's summary.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SteeringError
from ..kernels.backends import class_kernel
from . import backend_calls, flash_routing, interception
from .rebinding import Rebinding

DISPATCH_MODULE = "diffusers.models.attention_dispatch"
FUNCTION = "dispatch_attention_fn"
NATIVE_FAMILY = frozenset({"native", "_native_math", "_native_flash", "_native_efficient", "_native_cudnn"})
DIRECT = "sdpa"  # the backend name of a steered call that did not come through the dispatcher

_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("attnsteer_dispatch_backend", default=None)


class DispatchRouting(Rebinding):
    """The dispatcher's router, installed while at least one controller is attached (built once per dispatcher
    function and kept, so that dynamo's guards on it hold across sessions)."""

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[int, tuple[Callable, Callable]] = {}  # id(dispatcher) -> (dispatcher, its router)

    def routers(self) -> dict[int, tuple[Callable, Callable]]:
        original = getattr(sys.modules.get(DISPATCH_MODULE), FUNCTION, None)
        if not callable(original) or getattr(original, "_attnsteer_router", False):
            return {}
        return {id(original): (original, router_of(original))}


ROUTING = DispatchRouting()


def current_backend() -> str:
    """The dispatcher backend of the attention call being answered; ``"sdpa"`` for a call that bypassed it."""
    return _BACKEND.get() or DIRECT


def router_of(original: Callable) -> Callable:
    """The router of the dispatcher ``original`` (one per function, so dynamo's guards on it hold across sessions)."""
    known = ROUTING.known.get(id(original))
    if known is not None and known[0] is original:
        return known[1]
    signature = inspect.signature(original)

    @functools.wraps(original)
    def route(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # traced: the native family reaches attnsteer's custom op through SDPA
            return original(*args, **kwargs)
        where = flash_routing.steered_subject()
        if where is None:
            return original(*args, **kwargs)
        name = backend_name(original, kwargs.get("backend"))  # keyword-only in diffusers' signature
        token = _BACKEND.set(name)
        try:
            with interception.at_dispatcher():
                return _answer(original, signature, where, name, args, kwargs)
        finally:
            _BACKEND.reset(token)

    route._attnsteer_router = True  # type: ignore[attr-defined]
    ROUTING.known[id(original)] = (original, route)
    return route


def _answer(original: Callable, signature: inspect.Signature, where: str, name: str, args: tuple, kwargs: dict) -> Any:
    """One dispatcher call inside a steered module forward, on backend ``name``: the dispatcher itself for the native
    family (its SDPA call is answered by the module's handler), else SDPA on the same q, k, v."""
    if name in NATIVE_FAMILY:
        with backend_calls.answering(backend_calls.BackendCall(name, None, native=True)):
            return original(*args, **kwargs)
    values = signature.bind(*args, **kwargs)  # only here: binding costs more than a tiny call
    values.apply_defaults()
    call = _backend_call(original, name, values.arguments)
    with backend_calls.answering(call), class_kernel(call.lse), \
            flash_routing.routed(lambda: original(*args, **kwargs).transpose(1, 2)):
        return _as_sdpa(where, name, values.arguments)


def backend_name(dispatcher: Callable, backend: Any) -> str:
    """The name of the backend a dispatcher call runs on (the registry's active one when ``backend`` is None)."""
    if backend is None:
        registry = dispatcher.__globals__["_AttentionBackendRegistry"]
        backend = registry.get_active_backend()[0]
    return str(getattr(backend, "value", backend))


def _backend_call(dispatcher: Callable, name: str, values: dict[str, Any]) -> backend_calls.BackendCall:
    """How attnsteer may use backend ``name`` for this call (see :mod:`attnsteer.runtime.backend_calls`)."""
    registry = dispatcher.__globals__["_AttentionBackendRegistry"]
    member = next((m for m in registry._supported_arg_names if str(getattr(m, "value", m)) == name), None)
    lse_args = member is not None and "return_lse" in registry._supported_arg_names[member]
    key, mask = values["key"], values["attn_mask"]
    groups = values["query"].shape[2] // key.shape[2]
    if groups > 1 and name.startswith(backend_calls.SAGE):
        key = key.repeat_interleave(groups, dim=2)
    return backend_calls.for_dispatch(dispatcher, name, values.get("backend") or name, key,
                                      mask if isinstance(mask, torch.Tensor) else None, lse_args)


def _as_sdpa(where: str, backend: str, values: dict[str, Any]) -> torch.Tensor:
    """The dispatcher call as ``F.scaled_dot_product_attention`` on [B, H, N, D]; back in [B, N, H, D]."""
    extra = {k: v for k, v in (values.get("attention_kwargs") or {}).items() if not (v is None or v is False)}
    if extra or values.get("parallel_config") is not None:
        raise SteeringError(
            f"{where}: a dispatch_attention_fn call on backend {backend!r} with attention_kwargs {extra or {}} and "
            f"parallel_config {values.get('parallel_config')!r} cannot be steered exactly; attnsteer steers "
            "non-native backends without extra attention kwargs or context parallelism (use the 'native' backend for "
            "Ulysses, see docs/backends.md)")
    query, key, value, mask = values["query"], values["key"], values["value"], values["attn_mask"]
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise SteeringError(
            f"{where}: a dispatch_attention_fn call on backend {backend!r} passes a {type(mask).__name__} mask; "
            "attnsteer steers tensor masks only (see docs/backends.md)")
    if mask is not None and mask.ndim == 2 and mask.shape == (query.shape[0], key.shape[1]):
        mask = mask[:, None, None, :]  # [B, Nk] over the keys, as diffusers' native backend reads it
    groups = query.shape[2] // key.shape[2]
    if values["enable_gqa"] and groups > 1:
        key, value = key.repeat_interleave(groups, dim=2), value.repeat_interleave(groups, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=values["dropout_p"],
                                         is_causal=values["is_causal"], scale=values["scale"])
    return out.transpose(1, 2)


__all__ = ["DIRECT", "NATIVE_FAMILY", "ROUTING", "DispatchRouting", "backend_name", "current_backend", "router_of"]
