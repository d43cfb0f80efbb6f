"""Perturbed-attention guidance (PAG, STG) at run time: an extra, perturbed prediction combined with the others.

``pred = uncond + w (cond - uncond) + s (cond - perturbed)`` — diffusers' PAG pipelines and guiders
(``use_original_formulation=False``), the STG authors' CogVideoX and LTX pipelines. ``perturbed``
is the conditional prediction recomputed with the rules of branch ``"perturbed"`` active (identity
attention for PAG and STG-A) and, for STG-R, with whole transformer blocks skipped.

Pipelines that are not guider-based (Wan, CogVideoX, LTX, HunyuanVideo) do not know this branch,
so attnsteer owns it: a forward hook on the transformer runs the perturbed forward right after
each conditional one and adds ``s (cond - perturbed)`` to the conditional prediction *and* to the
unconditional one of the same step (the other half of a batched [uncond, cond] forward, or the
separate unconditional forward that follows). Whatever ``w`` the pipeline then applies,
``(uncond + s d) + w ((cond + s d) - (uncond + s d))`` is exactly the formula above, and with CFG off
the single conditional forward gives ``cond + s (cond - perturbed)``. attnsteer never needs to read
``w``: it works where the pipeline keeps it local (HunyuanVideo's ``true_cfg_scale``), changes it
after the forward (CogVideoX's dynamic CFG) or uses another per expert (Wan 2.2's
``guidance_scale_2``). The model is not modified: the hooks are removed with the session.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import StateManager

from ..errors import SteeringError
from ..language.schedules import StepInfo
from .hooks import ContextListener


class GuidanceShift:
    """``cond - perturbed`` of the current step, per conditional row, and the rows it is added to.

    A forward with conditional rows brings its perturbed prediction: the shift of its conditional
    rows, also given to its unconditional rows in order (the halves of a batched [uncond, cond]
    forward) and kept for the separate unconditional forward of the same step that follows it.
    """

    def __init__(self) -> None:
        self._step: StepInfo | None = None
        self._shift: torch.Tensor | None = None

    def clear(self) -> None:
        self._step, self._shift = None, None

    def shift(self, state: Any, prediction: torch.Tensor, perturbed: torch.Tensor | None) -> torch.Tensor:
        """The shift for every row of a forward's ``prediction`` (``perturbed`` None: no conditional rows)."""
        branches = state.branches
        cond = [i for i, b in enumerate(branches) if b == "cond"]
        uncond = [i for i, b in enumerate(branches) if b == "uncond"]
        if len(cond) + len(uncond) != len(branches):
            raise SteeringError(f"perturbed guidance: a forward with rows of branches {branches} (only cond and uncond "
                                "rows can be guided)")
        if perturbed is not None:
            cond_shift = prediction[cond] - perturbed[cond]
            self._step, self._shift = (state.step, cond_shift) if not uncond else (None, None)
        elif self._shift is not None and self._step == state.step:
            cond_shift, self._step, self._shift = self._shift, None, None
        else:
            raise SteeringError(
                f"perturbed guidance: an unconditional forward at step {state.step.step} without the conditional "
                "forward of that step before it; attnsteer adds s (cond - perturbed) to both, so it needs the "
                "conditional prediction first (as Wan, HunyuanVideo and diffusers' CFG guider run them)"
            )
        if uncond and len(uncond) != cond_shift.shape[0]:
            raise SteeringError(f"perturbed guidance: {len(uncond)} unconditional rows for {cond_shift.shape[0]} "
                                f"conditional ones in a forward with branches {branches}")
        shift = torch.empty_like(prediction)
        for rows in (cond, uncond):
            if rows:
                shift[rows] = cond_shift
        return shift


class BlockSkipHook(ModelHook):
    """On one transformer block: during the perturbed forward, the block returns its input (STG-R)."""

    def __init__(self, controller: Any, index: int) -> None:
        super().__init__()
        self.controller, self.index = controller, index

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.controller.skips_block(self.index):
            return self.controller.adapter.skipped_block_output(module, args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)


def first_tensor(output: Any) -> torch.Tensor:
    """The prediction in a transformer's output (a tensor, a tuple, or an output dataclass)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise SteeringError(f"perturbed guidance cannot find the prediction in a {type(output).__name__} output")


def replace_first_tensor(output: Any, tensor: torch.Tensor) -> Any:
    """``output`` with its prediction replaced, same container type."""
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, (tuple, list)):
        return type(output)([tensor, *output[1:]])
    output.sample = tensor
    return output


PERTURBED_CONTEXT = "attnsteer-perturbed"


@contextlib.contextmanager
def own_cache_context(model: torch.nn.Module) -> Iterator[None]:
    """The perturbed forward under cache contexts of its own: diffusers' cache hooks (FirstBlockCache, MagCache, ...)
    keep state per context, and under the conditional forward's they would serve it the conditional forward's cached
    blocks, so the perturbation would change nothing. Each cache gets ``"<context>/attnsteer-perturbed"``, then its
    context back; a stateful hook with no per-context state cannot be separated so, and is refused by name."""
    saved = []
    for manager in _cache_state_managers(model):
        context = manager._context
        if context is not None:
            saved.append((manager, context))
            manager.set_context(_perturbed(context))
    try:
        yield
    finally:
        for manager, context in saved:
            manager.set_context(context)


def _perturbed(context: Any) -> Any:
    if isinstance(context, str):
        return f"{context}/{PERTURBED_CONTEXT}"
    return dataclasses.replace(context, name=f"{context.name}/{PERTURBED_CONTEXT}")


def _cache_state_managers(model: torch.nn.Module) -> list[StateManager]:
    """The state managers of the stateful diffusers hooks in ``model`` (attnsteer's own hooks excluded)."""
    found: dict[int, StateManager] = {}
    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook_name, hook in getattr(registry, "hooks", {}).items():
            if not getattr(hook, "_is_stateful", False):
                continue
            managers = [v for v in vars(hook).values() if isinstance(v, StateManager)]
            if any(isinstance(m, ContextListener) for m in managers):
                continue  # attnsteer's own hook: it follows the branch, which the controller sets
            if not managers:
                raise SteeringError(
                    f"perturbed guidance (PAG, STG) on {type(model).__name__}: the diffusers hook {hook_name!r} "
                    f"({type(hook).__name__}) on {name or 'the model'!r} keeps state without a cache context, so the "
                    "perturbed forward would reuse what the conditional forward cached; disable that cache "
                    "(transformer.disable_cache()) to use perturbed guidance"
                )
            found.update((id(m), m) for m in managers)
    return list(found.values())
