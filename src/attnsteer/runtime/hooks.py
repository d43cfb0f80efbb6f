"""Interception: diffusers ``ModelHook``s on self-attention modules that catch their SDPA call.

Each hooked module runs its own forward inside a ``TorchFunctionMode`` that hands every call of
``F.scaled_dot_product_attention`` to a handler (the same technique as diffusers' layer-skip hooks),
so the handler sees the model's own q, k, v after RoPE and normalisation. Nothing else is patched,
and :func:`remove_hooks` leaves every module as it found it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager
from torch.overrides import TorchFunctionMode

from . import compiled_call
from .compiled_call import HOOK_NAME

CONTROLLER_ATTRIBUTE = "_attnsteer_controller"  # the model's controller, on the model while a session is attached

SDPAHandler = Callable[..., torch.Tensor]


class SDPAInterceptor(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to ``handler``; every other torch function runs as is."""

    def __init__(self, handler: SDPAHandler) -> None:
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.handler(*args, **kwargs)
        return func(*args, **kwargs)


class ContextListener(StateManager):
    """Receives the pipeline's ``cache_context`` name (diffusers hands it to stateful hooks' StateManagers)."""

    def __init__(self, on_context: Callable[[str | None], None]) -> None:
        super().__init__(state_cls=None)
        self._on_context = on_context

    def set_context(self, context: Any) -> None:
        self._on_context(None if context is None else context.name)

    def reset(self, *args: Any, **kwargs: Any) -> None:
        """Recordings live outside diffusers' hook state, so a pipeline's reset clears nothing."""


class AttentionHook(ModelHook):
    """Runs one attention module's forward through its controller: ``controller.run_attention(layer,
    attention, module, forward, args, kwargs)``. The hook's state is explicit (controller, layer,
    kind of attention, and under torch.compile the module's current call and eager chain), found through the
    module's diffusers hook registry, so a deep copy of a hooked model carries a consistent copy of it."""

    _is_stateful = True  # so that diffusers hands us the cache-context name

    def __init__(self, controller: Any, layer: Any, attention: str) -> None:
        super().__init__()
        self.controller, self.layer, self.attention = controller, layer, attention
        self.context = ContextListener(controller.set_context)
        self.module: torch.nn.Module | None = None
        self.stable = False  # whether module.forward is compiled_call's stable forward (ours is its only hook)
        self.chain: Callable | None = None  # the diffusers hook chain behind the stable forward (compiled_call)
        self.current: Any = None  # the ModuleCall (None: plain attention) of the module's current compiled forward
        self.marker: torch.Tensor | None = None  # the module's first parameter when compiled_call last indexed it

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.module = module
        compiled_call.register(self)
        return module

    def deinitalize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        compiled_call.release(self)
        self.module = None
        return module

    def __getstate__(self) -> dict:
        """A deep copy (of a hooked model) answers no compiled call: its controller removes it before it runs."""
        return {**self.__dict__, "stable": False, "chain": None, "current": None, "marker": None}

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        run = functools.partial(self.controller.run_attention, self.layer, self.attention, module)
        return _run_uncompiled(run, self.fn_ref.original_forward, args, kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


@torch.compiler.disable
def _run_uncompiled(run: Callable, forward: Callable, args: tuple, kwargs: dict) -> Any:
    """Keep the hook out of compiled graphs: step and branch change every call and would force recompiles."""
    return run(forward, args, kwargs)


class InstalledHook:
    """One hook on one module, with what is needed to leave the module exactly as it was."""

    def __init__(self, module: torch.nn.Module, hook: ModelHook) -> None:
        self.module, self.hook = module, hook
        self.had_registry = hasattr(module, "_diffusers_hook")
        self.had_forward_attr = "forward" in module.__dict__
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(hook, HOOK_NAME)
        if isinstance(hook, AttentionHook) and registry._hook_order == [HOOK_NAME] and not self.had_forward_attr:
            compiled_call.install_stable_forward(module, hook)  # compiled graphs outlive sessions, shared by blocks
            hook.stable = True

    def outer_hooks(self) -> list[str]:
        """Names of the diffusers hooks registered on this module after attnsteer's (they run first)."""
        order = getattr(getattr(self.module, "_diffusers_hook", None), "_hook_order", ())
        if len(order) < 2 or order[-1] == HOOK_NAME:  # ours alone, or the outermost (every forward checks)
            return []
        return list(order[order.index(HOOK_NAME) + 1 :]) if HOOK_NAME in order else []

    def remove(self) -> None:
        registry = self.module._diffusers_hook
        # diffusers' remove_hook, for a hook that is not the outermost, overwrites the next hook's
        # ``forward`` with ours' inner forward; for a hook with a ``new_forward`` (pyramid attention
        # broadcast, layer skip) that bypasses the hook for good, and its ``original_forward`` would
        # still call our removed hook. Re-link the next hook the way registering it would have.
        order, refs = registry._hook_order, registry._fn_refs
        index = order.index(HOOK_NAME)
        ours = refs[index]
        following = refs[index + 1] if index + 1 < len(order) else None
        kept = None if following is None else following.forward
        stable = getattr(self.hook, "stable", False)
        registry.remove_hook(HOOK_NAME, recurse=False)
        if stable:
            compiled_call.uninstall_stable_forward(self.hook)
            self.hook.stable = False
        if following is not None and following.original_forward is not None:
            following.forward = kept
            following.original_forward = ours.original_forward
        if not registry.hooks:
            if not self.had_registry:
                del self.module._diffusers_hook
            if not self.had_forward_attr:  # the registry leaves the class forward as an instance attribute
                self.module.__dict__.pop("forward", None)


def refresh_registry_caches(root: torch.nn.Module) -> None:
    """diffusers caches which submodules carry hooks; tell it the set changed."""
    registry = getattr(root, "_diffusers_hook", None)
    if registry is not None:
        registry.invalidate_child_registries_cache()
