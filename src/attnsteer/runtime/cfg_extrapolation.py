"""The STG authors' Wan 2.1 formula at run time (``PerturbedGuidance(formula="authors-wan")``).

``pred = cfg + s (cfg - perturbed)`` with ``cfg = uncond + w (cond - uncond)`` and the perturbed forward run on the
*unconditional* forward's inputs (the negative prompt), as the STG authors' ``Wan2.1/pipeline.py`` does; not the
generic ``uncond + w (cond - uncond) + s (cond - perturbed)`` of :mod:`attnsteer.runtime.guidance`.

The pipeline applies ``w`` itself, ``uncond' + w (cond - uncond')``, after both forwards of a step. attnsteer keeps
the conditional prediction and shifts the unconditional one by ``d = s (cfg - perturbed) / (1 - w)``, so that the
pipeline's result is ``cfg + (1 - w) d``, the formula. Unlike the generic formula this needs ``w``: it is read from
the pipeline (``_guidance_scale``; for Wan 2.2's second expert ``_guidance_scale_2``), and CFG must be on (w > 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import SteeringError

def authors_wan_shift(controller: Any, client: Any, strength: float, state: Any, prediction: torch.Tensor,
                      perturbed: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The shift of every row of one forward's ``prediction``: 0 on conditional rows (kept for the step's
    unconditional forward), ``s (cfg - perturbed) / (1 - w)`` on unconditional ones."""
    branches = state.branches
    cond = [i for i, b in enumerate(branches) if b == "cond"]
    uncond = [i for i, b in enumerate(branches) if b == "uncond"]
    if len(cond) + len(uncond) != len(branches):
        raise SteeringError(f"stg(formula='authors-wan'): a forward with rows of branches {branches} (only cond and "
                            "uncond rows can be guided)")
    w = _guidance_scale(controller)
    kept = controller.kept_conditional
    shift = torch.zeros_like(prediction)
    if not uncond:
        stale = kept.get(id(client))
        if stale is not None and stale[0] != state.step:
            raise SteeringError(_NO_UNCOND.format(step=stale[0].step))
        kept[id(client)] = (state.step, prediction[cond])
        return shift
    if cond:
        conditional = prediction[cond]  # a batched [uncond, cond] forward
    else:
        pending = kept.pop(id(client), None)
        if pending is None or pending[0] != state.step:
            raise SteeringError(f"stg(formula='authors-wan'): an unconditional forward at step {state.step.step} "
                                "without the conditional forward of that step before it (Wan runs cond, then uncond)")
        conditional = pending[1]
    if conditional.shape[0] != len(uncond):
        raise SteeringError(f"stg(formula='authors-wan'): {len(uncond)} unconditional rows for "
                            f"{conditional.shape[0]} conditional ones")
    unconditional = prediction[uncond]
    cfg = unconditional + w * (conditional - unconditional)
    shift[uncond] = strength * (cfg - perturbed()[uncond]) / (1.0 - w)
    return shift


_NO_UNCOND = ("stg(formula='authors-wan'): the conditional forward of step {step} had no unconditional forward after "
              "it, so its perturbed forward (on the negative prompt) never ran; the formula needs classifier-free "
              "guidance")


def _guidance_scale(controller: Any) -> float:
    """``w`` of the running pipeline for this transformer (Wan 2.2's second expert: ``guidance_scale_2``)."""
    pipeline = controller.steps.pipeline
    w = getattr(pipeline, "_guidance_scale", None)
    second = getattr(pipeline, "_guidance_scale_2", None)
    if controller.component == "transformer_2" and second is not None:
        w = second
    if w is None:
        owner = type(pipeline).__name__ if pipeline is not None else "a bare model"
        raise SteeringError("stg(formula='authors-wan') extrapolates from the CFG result, so it reads the pipeline's "
                            f"guidance scale, which {owner} does not keep (_guidance_scale); steer the pipeline, or "
                            "use formula='generic'")
    if float(w) <= 1.0:
        raise SteeringError(f"stg(formula='authors-wan') needs classifier-free guidance (guidance_scale > 1), got {w}; "
                            "its perturbed forward runs on the negative prompt")
    return float(w)
