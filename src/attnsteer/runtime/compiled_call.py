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

import types
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import SteeringError
from .call_state import sdpa_arguments

HOOK_NAME = "attnsteer"  # the name of attnsteer's hook in a module's diffusers HookRegistry


class CompiledRouting:
    """The one process-wide state of attnsteer: what the custom op needs and cannot be handed through the graph.

    A compiled graph is shared by the blocks of a regional compile and outlives sessions, so ``attnsteer::sdpa``
    learns its module at run time from a marker tensor (the module's first parameter). ``hook_of`` maps that
    marker to the module's installed :class:`~attnsteer.runtime.hooks.AttentionHook`; every other piece of state
    lives on the hooks (found through the module's diffusers ``HookRegistry``) and on the controllers. Everything
    here is held weakly: the hooks, the index from marker to hook (never the parameter itself), the controllers
    whose sessions block tracing and the module classes; nothing here keeps a model or its parameters alive.
    ``traceable`` is a plain bool because traced code reads (and dynamo guards) it.
    """

    def __init__(self) -> None:
        self.hooks: weakref.WeakSet[Any] = weakref.WeakSet()  # the installed AttentionHooks
        self.by_marker: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()  # _key(param) -> hook
        self.blocking: weakref.WeakSet[Any] = weakref.WeakSet()  # controllers whose sessions have output rules
        self.traceable = True  # no attached controller has output rules: traced modules route their SDPA calls
        self.forwards: weakref.WeakKeyDictionary[type, Any] = weakref.WeakKeyDictionary()  # class -> stable forward

    def hook_of(self, marker: torch.Tensor) -> Any:
        """The installed hook of the module whose first parameter is ``marker`` (None if no hook is installed); the
        index is rebuilt when a parameter moved (``module.to(...)``), was replaced, or a hook came or went. Each hook
        keeps the parameter it was indexed by, so a call checks it without walking the module's parameters."""
        key = _key(marker)
        hook = self.by_marker.get(key)
        if hook is not None and hook in self.hooks and hook.module is not None and hook.marker is not None \
                and _key(hook.marker) == key:  # its module's first parameter, as found at the last rebuild, still it
            return hook
        self.by_marker.clear()
        for hook in list(self.hooks):
            hook.marker = param = None if hook.module is None else _marker(hook.module)
            if param is not None:
                self.by_marker[_key(param)] = hook
        return self.by_marker.get(key)

    def refresh(self, controller: Any) -> None:
        """Record whether ``controller``'s sessions may be traced (none has output rules)."""
        if controller.clients and not controller.traceable:
            self.blocking.add(controller)
        else:
            self.blocking.discard(controller)
        self.traceable = not self.blocking


ROUTING = CompiledRouting()


def register(hook: Any) -> None:
    """``hook`` now answers the compiled calls of its module (when it is installed)."""
    ROUTING.hooks.add(hook)


def release(hook: Any) -> None:
    """Forget ``hook`` (when it is removed)."""
    ROUTING.hooks.discard(hook)
    hook.current = None


def hook_on(module: torch.nn.Module) -> Any:
    """attnsteer's hook in ``module``'s diffusers hook registry, or None."""
    registry = getattr(module, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(HOOK_NAME)


# cudagraph_unsafe: its Python (rule activity, planning, recording) must run at every call, never be replayed
@torch.library.custom_op("attnsteer::sdpa", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def steered_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                 dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool,
                 marker: torch.Tensor, call: int, after: torch.Tensor | None) -> torch.Tensor:
    """One SDPA call of the module whose first parameter is ``marker`` (its ``call``-th in this forward), answered
    as the eager hook would. The module travels as a tensor, so one graph serves every block of a regional compile;
    ``after`` (the module's previous call's output) keeps its calls in order in the compiled graph."""
    hook = ROUTING.hook_of(marker)
    kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if hook is None:  # never silently unsteered: the module must be found
        raise SteeringError(
            f"attnsteer::sdpa: no hooked attention module has the parameter this compiled call passed (shape "
            f"{tuple(marker.shape)}); the compiler copied or replaced it, so attnsteer cannot tell which module and "
            "rules this call belongs to. Compile the transformer without options that copy parameters, or steer "
            "it eagerly"
        )
    if call == 0:  # a new forward of the module: which rules are on now
        hook.current = hook.controller.begin_attention(hook.layer, hook.attention, hook.module)
    handler = hook.current
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


def _stable_forward_of(cls: type) -> Any:
    """The ``forward`` of hooked modules of class ``cls`` while attnsteer is their only diffusers hook (bound to the
    module; one function per class). Under dynamo (no autograd, no output rules) the module's own forward runs traced
    with its SDPA calls routed to ``attnsteer::sdpa``; otherwise the diffusers hook chain of the current session
    runs. The class's forward is a closure constant: dynamo cannot call ``type(module).forward`` on classes it
    keeps in the graph as opaque callables (diffusers' ``Attention``)."""
    stable = ROUTING.forwards.get(cls)
    if stable is not None:
        return stable
    original = cls.forward

    def stable_forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if ROUTING.traceable and torch.compiler.is_compiling() and not torch.is_grad_enabled():
            marker = _marker(module)
            if marker is not None:
                router = SDPARouter(marker)
                with router:
                    output = original(module, *args, **kwargs)
                if router.calls == 0:  # known while tracing: this forward never calls SDPA
                    _no_attention(marker)
                return output
        return _run_chain(module, args, kwargs)

    ROUTING.forwards[cls] = stable_forward
    return stable_forward


@torch.compiler.disable
def _run_chain(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    """The diffusers hook chain of ``module``'s current session, run eagerly (found through the module's hook
    registry, outside dynamo: its guards could hand one module's chain to another)."""
    chain = getattr(hook_on(module), "chain", None)  # none in a deep copy, whose controller removes the copied hooks
    return type(module).forward(module, *args, **kwargs) if chain is None else chain(*args, **kwargs)


def install_stable_forward(module: torch.nn.Module, hook: Any) -> Any:
    """Put the stable forward in front of the diffusers hook chain just registered on ``module``: a method bound
    to one function per module class for every module and session, so dynamo's guards on ``module.forward`` hold across blocks and
    sessions and a compiled graph is reused."""
    hook.chain = module.forward
    module.forward = types.MethodType(_stable_forward_of(type(module)), module)
    return module.forward


def uninstall_stable_forward(hook: Any) -> None:
    """The session left (the registry has restored ``forward``)."""
    hook.chain = None


def refresh(controller: Any) -> None:
    """Record whether ``controller``'s sessions may be traced (none has output rules)."""
    ROUTING.refresh(controller)


@torch.compiler.disable
def _no_attention(marker: torch.Tensor) -> None:
    """A traced module forward that made no SDPA call: raise, as the eager hook does, if a rule or recorder
    needed it."""
    hook = ROUTING.hook_of(marker)
    if hook is None:
        return
    call = hook.controller.begin_attention(hook.layer, hook.attention, hook.module)
    if call is not None:
        hook.controller.end_attention(call, hook.module, None)


__all__ = ["HOOK_NAME", "ROUTING", "CompiledRouting", "SDPARouter", "hook_on", "install_stable_forward", "refresh",
           "register", "release", "steered_sdpa", "uninstall_stable_forward"]
