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

``PerturbedGuidance(formula="authors-wan")`` is the STG authors' Wan 2.1 formula instead, ``cfg + s (cfg - perturbed)``
with the perturbed forward on the negative prompt: :mod:`attnsteer.runtime.cfg_extrapolation`.

Nested sessions with perturbed guidance each keep their own perturbed branch: one perturbed forward per
session, with that session's ``"perturbed"`` rules and skipped blocks (plus the ``"perturbed"`` rules of
sessions without guidance of their own), and ``sum_i s_i (cond - perturbed_i)`` added.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import StateManager

from ..errors import SteeringError
from ..language.schedules import StepInfo
from .cfg_extrapolation import authors_wan_shift
from .hooks import ContextListener


class GuidanceShift:
    """``cond - perturbed`` of the current step, per conditional row, and the rows it is added to.

    A forward with conditional rows brings its perturbed prediction: the shift of its conditional
    rows, also given to its unconditional rows in order (the halves of a batched [uncond, cond]
    forward) and kept for the separate unconditional forward of the same step that follows it.
    Each session with perturbed guidance keeps its own shift (``key``).
    """

    def __init__(self) -> None:
        self._pending: dict[int, tuple[StepInfo, torch.Tensor]] = {}

    def clear(self) -> None:
        self._pending.clear()

    def keep(self, keys: set[int]) -> None:
        """Forget the shifts of sessions that have left (only ``keys`` stay)."""
        for key in [k for k in self._pending if k not in keys]:
            del self._pending[key]

    def shift(self, state: Any, prediction: torch.Tensor, perturbed: torch.Tensor | None, key: int = 0) -> torch.Tensor:
        """The shift for every row of a forward's ``prediction`` (``perturbed`` None: no conditional rows)."""
        branches = state.branches
        cond = [i for i, b in enumerate(branches) if b == "cond"]
        uncond = [i for i, b in enumerate(branches) if b == "uncond"]
        if len(cond) + len(uncond) != len(branches):
            raise SteeringError(f"perturbed guidance: a forward with rows of branches {branches} (only cond and uncond "
                                "rows can be guided)")
        pending = self._pending.pop(key, None)
        if perturbed is not None:
            cond_shift = prediction[cond] - perturbed[cond]
            if not uncond:
                self._pending[key] = (state.step, cond_shift)
        elif pending is not None and pending[0] == state.step:
            cond_shift = pending[1]
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


def perturb(controller: Any, forward: Callable, args: tuple, kwargs: dict, output: Any) -> Any:
    """After a forward of ``controller``'s model: for each session with perturbed guidance on at this step, its
    perturbed forward after a conditional one, and the sum of ``s_i (cond - perturbed_i)`` added to every row."""
    state = controller.state
    if state is None or not state.branches:
        return output
    clients = [c for c in controller.clients if getattr(c, "guidance", None) is not None]
    controller.guidance_shift.keep({id(c) for c in clients})
    strengths = [(c, s) for c, s in ((c, c.guidance.scale_at(state.step, controller.adapter.family)) for c in clients) if s != 0]
    if not strengths:
        return output
    rescale = getattr(controller.steps.pipeline, "_guidance_rescale", 0.0) or 0.0
    if rescale > 0:
        raise SteeringError(
            f"perturbed guidance on {type(controller.model).__name__} with guidance_rescale={rescale}: the pipeline "
            "rescales by the standard deviation of the conditional prediction, which attnsteer has shifted by "
            "s (cond - perturbed), so the result would not be the published formula; call the pipeline with "
            "guidance_rescale=0"
        )
    prediction = first_tensor(output)
    total = None
    for client, strength in strengths:
        if client.guidance.formula == "authors-wan":  # the STG authors' Wan formula
            part = authors_wan_shift(controller, client, strength, state, prediction,
                                     lambda c=client: perturbed_forward(controller, c, state, forward, args, kwargs))
        else:
            perturbed = perturbed_forward(controller, client, state, forward, args, kwargs) \
                if "cond" in state.branches else None
            part = strength * controller.guidance_shift.shift(state, prediction, perturbed, key=id(client))
        total = part if total is None else total + part
    return replace_first_tensor(output, prediction + total)


def perturbed_forward(controller: Any, client: Any, state: Any, forward: Callable, args: tuple,
                      kwargs: dict) -> torch.Tensor:
    """The prediction of ``forward(*args, **kwargs)`` rerun as ``client``'s perturbed forward (its rules of branch
    ``"perturbed"`` on, its blocks skipped), under cache contexts of its own."""
    controller.state = attrs.evolve(state, branches=("perturbed",) * len(state.branches))
    controller.perturbing, controller.perturbing_client = client.guidance, client
    try:
        with own_cache_context(controller.model):  # not the conditional forward's cached blocks
            return first_tensor(forward(*args, **kwargs))
    finally:
        controller.state, controller.perturbing, controller.perturbing_client = state, None, None


def in_perturbed_forward(perturbing_client: Any, client: Any) -> bool:
    """Whether ``client``'s ``"perturbed"`` rules act in the perturbed forward of ``perturbing_client`` (None:
    not in a perturbed forward): its own, or any of a session without perturbed guidance of its own."""
    return perturbing_client is None or client is perturbing_client or getattr(client, "guidance", None) is None


class BlockSkipHook(ModelHook):
    """On one transformer block: during the perturbed forward, the block returns its input (STG-R)."""

    def __init__(self, controller: Any, index: int, name: str = "") -> None:
        super().__init__()
        self.controller, self.index, self.name = controller, index, name

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.controller.skips_block(self.index):
            log = getattr(self.controller.perturbing_client, "on_block_skip", None)
            if log is not None:  # the session's summary lists the blocks its perturbed forward skipped
                component = self.controller.component
                log(f"{component}.{self.name}" if component else self.name)
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
