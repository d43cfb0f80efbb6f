"""Perturbed-attention guidance (PAG, STG): an extra, perturbed prediction combined with the others.

``pred = uncond + w (cond - uncond) + s (cond - perturbed)`` — diffusers' PAG pipelines and guiders
(``use_original_formulation=False``), the STG authors' CogVideoX and LTX pipelines. ``perturbed``
is the conditional prediction recomputed with the rules of branch ``"perturbed"`` active (identity
attention for PAG and STG-A) and, for STG-R, with whole transformer blocks skipped.

Pipelines that are not guider-based (Wan, CogVideoX, LTX, HunyuanVideo) do not know this branch,
so attnsteer owns it: a forward hook on the transformer runs the perturbed forward right after
each conditional one, and returns ``cond + (s / w) (cond - perturbed)`` for the conditional rows.
The pipeline's own classifier-free guidance ``uncond + w (cond' - uncond)`` then yields exactly the
formula above (``w`` is the pipeline's guidance scale, ``guidance_scale_2`` for Wan 2.2's second
expert, and 1 when CFG is off, which gives ``cond + s (cond - perturbed)``). The model is not
modified: the hooks are removed with the session.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from diffusers.hooks import ModelHook

from .errors import ConfigError, SteeringError
from .schedules import Schedule, StepInfo, always
from .validation import integer, real_number



def _scale(value: object) -> float:
    number = real_number(value, "PerturbedGuidance(scale=...)")
    if number < 0:
        raise ConfigError(f"PerturbedGuidance(scale=...) must be >= 0, got {value!r}")
    return number


def _blocks(value: object) -> tuple[int, ...]:
    items = (value,) if isinstance(value, int) else tuple(value)  # type: ignore[arg-type]
    return tuple(integer(i, "PerturbedGuidance(skip_blocks=...)", minimum=0) for i in items)


@attrs.frozen
class PerturbedGuidance:
    """The perturbed branch of a recipe: its scale ``s``, when it is on, the adaptive decay
    ``s_t = max(s - adaptive_scale * (1000 - t), 0)`` and, for STG-R, the blocks its forward skips."""

    scale: float = attrs.field(converter=_scale)
    when: Schedule = attrs.field(default=always, validator=attrs.validators.instance_of(Schedule))
    adaptive_scale: float = attrs.field(default=0.0, converter=lambda v: real_number(v, "adaptive_scale"))
    skip_blocks: tuple[int, ...] = attrs.field(default=(), converter=_blocks)

    def scale_at(self, info: StepInfo) -> float:
        """``s`` for this forward (0 when the schedule is off)."""
        if not self.when.active(info):
            return 0.0
        if self.adaptive_scale and info.timestep is not None:
            return max(self.scale - self.adaptive_scale * (1000.0 - info.timestep), 0.0)
        return self.scale


def guidance_scale(pipeline: Any, component: str) -> float:
    """The ``w`` the pipeline applies in this forward (1 when classifier-free guidance is off)."""
    from .plugins.branches import guidance_is_on

    if pipeline is None or guidance_is_on(pipeline) is False:
        return 1.0
    value = getattr(pipeline, "_guidance_scale_2", None) if component == "transformer_2" else None
    value = getattr(pipeline, "_guidance_scale", None) if value is None else value
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
        raise SteeringError(f"perturbed guidance needs the pipeline's guidance scale; {type(pipeline).__name__} "
                            f"reports {value!r}")
    return float(value)


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
