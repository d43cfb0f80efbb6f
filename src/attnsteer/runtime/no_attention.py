"""Why a hooked module ran without the attention call attnsteer needed: the message of the refusal, naming the cause."""

from __future__ import annotations

import torch

from .compiled_call import HOOK_NAME
from .dispatch_routing import NATIVE_FAMILY


def why_no_attention(module: torch.nn.Module, attention: str) -> str:
    """Why a hooked module ran without an SDPA or dispatcher call that attnsteer could answer, naming the actual cause."""
    registry = getattr(module, "_diffusers_hook", None)
    others = [name for name in getattr(registry, "hooks", {}) if name != HOOK_NAME]
    if others:
        return (f"the module ran without computing {attention}-attention through SDPA; the diffusers hooks {others} "
                "on it (a cache or a skipped layer) returned first, so the rule cannot apply there: disable them or "
                "filter this layer out with Rule(layers=...)")
    backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
    name = str(getattr(backend, "value", backend or "unknown"))
    if attention == "cross":
        return ("no SDPA call of the module had the forward's text tokens as keys, so the cross-attention rule found "
                f"nothing to steer (attention backend: {name})")
    compiled = (f" Under torch.compile the {name!r} backend is traced past attnsteer: run it eagerly, or use a native "
                "backend with torch.compile." if backend is not None and name not in NATIVE_FAMILY else "")
    return ("the module computed attention without calling torch.nn.functional.scaled_dot_product_attention or "
            f"diffusers' dispatch_attention_fn (attention backend: {name}), so it cannot be steered or recorded.{compiled} "
            "A model of your own must call torch.nn.functional.scaled_dot_product_attention, diffusers' "
            "dispatch_attention_fn, or flash-attn's flash_attn_func / flash_attn_varlen_func inside the hooked module "
            "(see docs/backends.md)")
