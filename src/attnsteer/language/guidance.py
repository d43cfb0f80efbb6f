"""Perturbed-attention guidance (PAG, STG) as rules declare it: the scale ``s`` of the perturbed branch, when it
is on, and the blocks STG-R skips. How the runtime computes it: :mod:`attnsteer.runtime.guidance`."""

from __future__ import annotations

import attrs

from ..errors import ConfigError, SteeringError
from ..validation import integer, real_number
from .model_layers import ModelDepth, ModelLayers
from .schedules import Schedule, StepInfo, always


def _non_negative(value: object, field: str) -> float:
    number = real_number(value, field)
    if number < 0:
        raise ConfigError(f"{field} must be >= 0, got {value!r}")
    return number


def _scale(value: object) -> float:
    return _non_negative(value, "PerturbedGuidance(scale=...)")


def _family_scales(value: object) -> tuple[tuple[str, float], ...]:
    items = dict(value).items() if value else ()  # type: ignore[call-overload]
    return tuple((str(f), _non_negative(s, f"PerturbedGuidance(family_scales=...)[{f!r}]")) for f, s in items)


def _blocks(value: object) -> tuple[int, ...] | ModelLayers:
    if isinstance(value, ModelLayers):
        return value
    items = (value,) if isinstance(value, int) else tuple(value)  # type: ignore[arg-type]
    return tuple(integer(i, "PerturbedGuidance(skip_blocks=...)", minimum=0) for i in items)


FORMULAS = ("generic", "authors-wan")


def _formula(value: object) -> str:
    if value not in FORMULAS:
        raise ConfigError(f"PerturbedGuidance(formula=...) must be one of {FORMULAS}, got {value!r}")
    return value  # type: ignore[return-value]


@attrs.frozen
class PerturbedGuidance:
    """The perturbed branch of a recipe: its scale ``s``, when it is on, the adaptive decay
    ``s_t = max(s - adaptive_scale * (1000 - t), 0)`` and, for STG-R, the blocks its forward skips (indices, or
    a model-relative filter such as ``at.family_layers(...)`` resolved against the adapter's blocks)."""

    scale: float = attrs.field(converter=_scale)
    when: Schedule = attrs.field(default=always, validator=attrs.validators.instance_of(Schedule))
    adaptive_scale: float = attrs.field(default=0.0, converter=lambda v: _non_negative(v, "PerturbedGuidance(adaptive_scale=...)"))
    skip_blocks: tuple[int, ...] | ModelLayers = attrs.field(default=(), converter=_blocks)
    family_scales: tuple[tuple[str, float], ...] = attrs.field(default=(), converter=_family_scales)
    """``{family: s}``: the scale on models of those adapter families (a recipe's authors' values); ``scale`` elsewhere."""
    formula: str = attrs.field(default="generic", converter=_formula)
    """``"generic"``: ``uncond + w (cond - uncond) + s (cond - perturbed)``, the perturbed forward after the conditional
    one; ``"authors-wan"``: the STG authors' Wan 2.1 pipeline, ``cfg + s (cfg - perturbed)`` with the perturbed forward
    after the unconditional one (the negative prompt)."""

    def blocks_in(self, model: ModelDepth) -> tuple[int, ...]:
        """The block indices the perturbed forward skips in ``model`` (its family and block count)."""
        return self.skip_blocks.indices(model) if isinstance(self.skip_blocks, ModelLayers) else self.skip_blocks

    def scale_at(self, info: StepInfo, family: str | None = None) -> float:
        """``s`` for this forward of a model of adapter ``family`` (0 when the schedule is off)."""
        if not self.when.active(info):
            return 0.0
        scale = dict(self.family_scales).get(family, self.scale) if family is not None else self.scale
        if self.adaptive_scale:
            if info.timestep is None:
                raise SteeringError(f"PerturbedGuidance(adaptive_scale={self.adaptive_scale}) decays with the timestep, "
                                    "but this forward has none (pass the timestep to the transformer, or set "
                                    "adaptive_scale=0)")
            return max(scale - self.adaptive_scale * (1000.0 - info.timestep), 0.0)
        return scale
