"""Where a steered module forward's SDPA calls are caught: over the whole forward, or at diffusers' dispatcher only.

The :class:`~attnsteer.runtime.hooks.SDPAInterceptor` is a ``TorchFunctionMode``: over a whole module forward it sees
every torch call the forward makes (about 45 in a Wan attention forward, each passing through Python), to catch the
one or two SDPA calls. Modules whose processor calls diffusers' ``dispatch_attention_fn`` need less: once a forward
under the interceptor has shown that every SDPA call of the module came through the dispatcher, later forwards of the
module run without it, and the dispatcher's router (:mod:`attnsteer.runtime.dispatch_routing`) enters it around the
dispatcher call alone. What was learned holds for the module's processor object and its number of calls: a forward with
another processor is caught whole again, and one that answers fewer calls than learned (but some) raises, naming the
module, rather than let an SDPA call that bypassed the dispatcher run unsteered; one that answers none is caught whole
from then on, and the controller says why it made no call. (What this cannot see: the same processor object taking,
in a later forward, a code path that adds a direct SDPA call to as many dispatcher calls as before.)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Hashable, Iterator
from typing import Any

import torch

from ..errors import SteeringError
from .hooks import SDPAInterceptor

# (the module call answering, whether its whole forward runs under the interceptor), during a steered module forward
_CURRENT: contextvars.ContextVar[tuple[Any, bool] | None] = contextvars.ContextVar("attnsteer_module_call",
                                                                                   default=None)
Learned = dict[Hashable, tuple[Any, int]]  # the controller's: (attention, layer index) -> (the module's processor,
# SDPA calls per forward), for the modules whose every SDPA call came through the dispatcher


@contextlib.contextmanager
def catching(call: Any, module: torch.nn.Module, learned_by_module: Learned) -> Iterator[None]:
    """Answer the SDPA calls of ``module``'s forward inside the block with ``call`` (a ModuleCall): under the
    interceptor, or at the dispatcher where this module's forwards were seen to call SDPA only through it
    (``learned_by_module``, kept by the module's controller)."""
    processor = getattr(module, "processor", None)
    key = (call.attention, call.layer.index)
    learned = learned_by_module.get(key)
    at_dispatcher = learned is not None and learned[0] is processor
    token = _CURRENT.set((call, not at_dispatcher))
    try:
        if at_dispatcher:
            yield
        else:
            with SDPAInterceptor(call):
                yield
    finally:
        _CURRENT.reset(token)
    if at_dispatcher:
        if call.calls < learned[1]:
            del learned_by_module[key]
            if not call.calls:  # no attention at all: the controller says why (a hook that skips it, ...)
                return
            raise SteeringError(
                f"{call.subject}: this forward of {type(module).__name__} answered {call.calls} attention calls "
                f"through diffusers' dispatch_attention_fn where its earlier forwards answered {learned[1]}; an SDPA "
                "call that bypasses the dispatcher may have run unsteered. Its next forward is caught whole again; "
                "please report the module and processor")
    elif processor is not None and call.calls and call.dispatched == call.calls:
        learned_by_module[key] = (processor, call.calls)
    else:  # some SDPA call bypassed the dispatcher (or another processor's entry is stale)
        learned_by_module.pop(key, None)


@contextlib.contextmanager
def at_dispatcher() -> Iterator[None]:
    """Around one ``dispatch_attention_fn`` call inside a steered module forward: count it, and catch its SDPA call
    where the forward runs without the interceptor (see :func:`catching`)."""
    current = _CURRENT.get()
    if current is None:
        yield
        return
    call, intercepted = current
    call.dispatched += 1
    if intercepted:
        yield
        return
    token = _CURRENT.set(None)  # a dispatcher call made while answering this one is the handler's own, not the module's
    try:
        with SDPAInterceptor(call):
            yield
    finally:
        _CURRENT.reset(token)
