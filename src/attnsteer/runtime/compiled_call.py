"""A hooked attention module under ``torch.compile``: traced, with each SDPA call an opaque custom op.

In eager mode a hooked module runs under ``torch.compiler.disable`` (:mod:`attnsteer.runtime.hooks`). While
dynamo traces it (no autograd, no output rules in any attached session), its stable forward
(:func:`install_stable_forward`) runs the module's own forward under an :class:`SDPARouter` instead:
dynamo traces the projections, norms and RoPE into the graph and every
``F.scaled_dot_product_attention`` call becomes the custom op ``attnsteer::sdpa``. The op's eager
implementation does at run time what the eager hook does: it asks the controller which rules are on
at this forward's step and branch (:meth:`Controller.begin_attention`) and answers the call with the
same :class:`~attnsteer.runtime.module_call.ModuleCall`. Step, branch and plan never enter the graph, so
there is no graph break per module and no recompile per step, plan or session. The op's inputs are
q, k, v, the mask, the module's first parameter (which tells the op its module at run time, so the
blocks of a regional compile share one graph), the call's index within the module's forward and the
module's previous call's output (which keeps the calls in order).
"""

from __future__ import annotations

import itertools
import types
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import SteeringError
from .call_state import sdpa_arguments

_SLOT_OF: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()
_NEXT_SLOT = itertools.count()
_HOOKS: dict[int, Any] = {}  # slot -> the AttentionHook installed on that module now
_CURRENT: dict[int, Any] = {}  # slot -> the ModuleCall (or None: plain attention) of the module's current forward


def register(module: torch.nn.Module, hook: Any) -> int:
    """The slot of ``module`` (stable across sessions, so compiled graphs are reused), now answered by ``hook``."""
    slot = _SLOT_OF.get(module)
    if slot is None:
        slot = _SLOT_OF[module] = next(_NEXT_SLOT)
    _HOOKS[slot] = hook
    return slot


def release(slot: int, hook: Any) -> None:
    """Forget ``hook`` as the answer of ``slot`` (when the hook is removed)."""
    if _HOOKS.get(slot) is hook:
        del _HOOKS[slot]
    _CURRENT.pop(slot, None)


# cudagraph_unsafe: its Python (rule activity, planning, recording) must run at every call, never be replayed
@torch.library.custom_op("attnsteer::sdpa", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def steered_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                 dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool,
                 marker: torch.Tensor, call: int, after: torch.Tensor | None) -> torch.Tensor:
    """One SDPA call of the module whose first parameter is ``marker`` (its ``call``-th in this forward), answered
    as the eager hook would. The module travels as a tensor, so one graph serves every block of a regional compile;
    ``after`` (the module's previous call's output) keeps its calls in order in the compiled graph."""
    hook = _hook_of(marker)
    kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if hook is None:  # never silently unsteered: the module must be found
        raise SteeringError(
            f"attnsteer::sdpa: no hooked attention module has the parameter this compiled call passed (shape "
            f"{tuple(marker.shape)}); the compiler copied or replaced it, so attnsteer cannot tell which module and "
            "rules this call belongs to. Compile the transformer without options that copy parameters, or steer "
            "it eagerly"
        )
    if call == 0:  # a new forward of the module: which rules are on now
        _CURRENT[hook.slot] = hook.controller.begin_attention(hook.layer, hook.attention, hook.module)
    handler = _CURRENT.get(hook.slot)
    out = F.scaled_dot_product_attention(q, k, v, **kwargs) if handler is None else handler(q, k, v, **kwargs)
    out = out.contiguous()  # the fake below promises a contiguous result
    return out.clone() if any(out is t for t in (q, k, v)) else out


@steered_sdpa.register_fake
def _(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, marker, call, after):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _marker(module: torch.nn.Module) -> torch.Tensor | None:
    return next(module.parameters(), None)


def _key(tensor: torch.Tensor) -> tuple:
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))


_BY_MARKER: dict[tuple, tuple[int, torch.Tensor]] = {}  # _key(first parameter) -> (slot, that parameter)


def _hook_of(marker: torch.Tensor) -> Any:
    """The installed hook of the module whose first parameter is ``marker`` (None if no hook is installed); the
    index is rebuilt when a parameter moved (``module.to(...)``) or a hook came or went."""
    key = _key(marker)
    found = _BY_MARKER.get(key)
    if found is not None and found[0] in _HOOKS and _key(found[1]) == key:
        return _HOOKS[found[0]]
    _BY_MARKER.clear()
    for slot, hook in _HOOKS.items():
        param = None if hook.module is None else _marker(hook.module)
        if param is not None:
            _BY_MARKER[_key(param)] = (slot, param)
    found = _BY_MARKER.get(key)
    return None if found is None else _HOOKS[found[0]]


class SDPARouter(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to ``attnsteer::sdpa`` for the module of ``marker``, counting calls."""

    def __init__(self, marker: torch.Tensor) -> None:
        super().__init__()
        self.marker, self.calls, self.last = marker, 0, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:

            q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa = sdpa_arguments(args, kwargs)
            call, self.calls = self.calls, self.calls + 1
            self.last = steered_sdpa(q, k, v, attn_mask, float(dropout_p), bool(is_causal),
                                     None if scale is None else float(scale), bool(enable_gqa), self.marker, call,
                                     self.last)
            return self.last
        if func is torch.Tensor.unflatten:  # its Python body calls super().unflatten, which dynamo cannot trace
            return torch.unflatten(*args, **kwargs)
        return func(*args, **kwargs)


class _Switch:
    """Whether traced modules route their SDPA calls (no attached controller has output rules)."""

    def __init__(self) -> None:
        self.traceable = True
        self.blocking: set[int] = set()  # id() of the controllers whose sessions have output rules


_SWITCH = _Switch()
_EAGER: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()


def _stable_forward_of(cls: type) -> Any:
    """The ``forward`` of hooked modules of class ``cls`` while attnsteer is their only diffusers hook (bound to the
    module; one function per class). Under dynamo (no autograd, no output rules) the module's own forward runs traced
    with its SDPA calls routed to ``attnsteer::sdpa``; otherwise the diffusers hook chain of the current session
    runs. The class's forward is a closure constant: dynamo cannot call ``type(module).forward`` on classes it
    keeps in the graph as opaque callables (diffusers' ``Attention``)."""
    stable = _PER_CLASS.get(cls)
    if stable is not None:
        return stable
    original = cls.forward

    def stable_forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if _SWITCH.traceable and torch.compiler.is_compiling() and not torch.is_grad_enabled():
            marker = _marker(module)
            if marker is not None:
                router = SDPARouter(marker)
                with router:
                    output = original(module, *args, **kwargs)
                if router.calls == 0:  # known while tracing: this forward never calls SDPA
                    _no_attention(marker)
                return output
        return _run_chain(module, args, kwargs)

    _PER_CLASS[cls] = stable_forward
    return stable_forward


_PER_CLASS: dict[type, Any] = {}


@torch.compiler.disable
def _run_chain(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    """The diffusers hook chain of ``module``'s current session, run eagerly (dynamo must not look up a
    WeakKeyDictionary: it can return another module's entry)."""
    chain = _EAGER.get(module)  # none in a deep copy of a hooked model, whose controller removes the copied hooks
    return type(module).forward(module, *args, **kwargs) if chain is None else chain(*args, **kwargs)


def install_stable_forward(module: torch.nn.Module) -> Any:
    """Put the stable forward in front of the diffusers hook chain just registered on ``module``: a method bound
    to one function per module class for every module and session, so dynamo's guards on ``module.forward`` hold across blocks and
    sessions and a compiled graph is reused."""
    _EAGER[module] = module.forward
    module.forward = types.MethodType(_stable_forward_of(type(module)), module)
    return module.forward


def uninstall_stable_forward(module: torch.nn.Module) -> None:
    """The session left (the registry has restored ``forward``)."""
    _EAGER.pop(module, None)


def refresh(controller: Any) -> None:
    """Record whether ``controller``'s sessions may be traced (none has output rules)."""
    if controller.clients and not controller.traceable:
        _SWITCH.blocking.add(id(controller))
    else:
        _SWITCH.blocking.discard(id(controller))
    _SWITCH.traceable = not _SWITCH.blocking


@torch.compiler.disable
def _no_attention(marker: torch.Tensor) -> None:
    """A traced module forward that made no SDPA call: raise, as the eager hook does, if a rule or recorder
    needed it."""
    hook = _hook_of(marker)
    if hook is None:
        return
    call = hook.controller.begin_attention(hook.layer, hook.attention, hook.module)
    if call is not None:
        hook.controller.end_attention(call, hook.module, None)


__all__ = ["SDPARouter", "install_stable_forward", "refresh", "register", "release", "steered_sdpa",
           "uninstall_stable_forward"]
