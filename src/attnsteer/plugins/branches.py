"""Which batch rows of a forward belong to which classifier-free-guidance branch.

Pipelines either run one forward per branch under ``cache_context("cond")`` / ``("uncond")``
(Wan, HunyuanVideo 1.5 guiders: "pred_cond" / "pred_uncond"), or batch both branches in one forward
as [uncond, cond] under "cond_uncond" or no context (CogVideoX, LTX-Video; the rule diffusers'
own FasterCache uses: rows [B/2:] are conditional).
"""

from __future__ import annotations

from typing import Any

COND_CONTEXTS = ("cond", "pred_cond")
UNCOND_CONTEXTS = ("uncond", "pred_uncond")
BATCHED_CONTEXTS = ("cond_uncond", None)


def guidance_is_on(pipeline: Any) -> bool | None:
    """Whether the pipeline runs classifier-free guidance in this call (None if it does not say).

    Most pipelines expose ``do_classifier_free_guidance``; CogVideoX keeps it local and only
    stores ``_guidance_scale``.
    """
    if pipeline is None:
        return None
    for attr in ("do_classifier_free_guidance", "do_true_cfg"):
        try:
            value = getattr(pipeline, attr, None)
        except (AttributeError, TypeError):  # properties that read state set only inside __call__
            continue
        if value is not None:
            return bool(value)
    scale = getattr(pipeline, "_guidance_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return scale > 1.0
    return None


def branches_from_context(context: str | None, batch_size: int, pipeline: Any) -> tuple[str, ...] | None:
    """Per-row branches from the cache-context name; None where they cannot be told."""
    if context in COND_CONTEXTS:
        return ("cond",) * batch_size
    if context in UNCOND_CONTEXTS:
        return ("uncond",) * batch_size
    if context in BATCHED_CONTEXTS:
        guided = guidance_is_on(pipeline)
        if guided is False:
            return ("cond",) * batch_size
        if guided and batch_size % 2 == 0:
            half = batch_size // 2
            return ("uncond",) * half + ("cond",) * half
    return None
