"""Perturbed-attention guidance (PAG, STG) as rules declare it: the scale ``s`` of the perturbed branch, when it
is on, and the blocks STG-R skips. How the runtime computes it: :mod:`attnsteer.runtime.guidance`."""

from __future__ import annotations

import attrs

from ..errors import ConfigError, SteeringError
from ..validation import integer, real_number
from .schedules import Schedule, StepInfo, always


def _non_negative(value: object, field: str) -> float:
    number = real_number(value, field)
    if number < 0:
        raise ConfigError(f"{field} must be >= 0, got {value!r}")
    return number


def _scale(value: object) -> float:
    return _non_negative(value, "PerturbedGuidance(scale=...)")


def _blocks(value: object) -> tuple[int, ...]:
    items = (value,) if isinstance(value, int) else tuple(value)  # type: ignore[arg-type]
    return tuple(integer(i, "PerturbedGuidance(skip_blocks=...)", minimum=0) for i in items)


@attrs.frozen
class PerturbedGuidance:
    """The perturbed branch of a recipe: its scale ``s``, when it is on, the adaptive decay
    ``s_t = max(s - adaptive_scale * (1000 - t), 0)`` and, for STG-R, the blocks its forward skips."""

    scale: float = attrs.field(converter=_scale)
    when: Schedule = attrs.field(default=always, validator=attrs.validators.instance_of(Schedule))
    adaptive_scale: float = attrs.field(default=0.0, converter=lambda v: _non_negative(v, "PerturbedGuidance(adaptive_scale=...)"))
    skip_blocks: tuple[int, ...] = attrs.field(default=(), converter=_blocks)

    def scale_at(self, info: StepInfo) -> float:
        """``s`` for this forward (0 when the schedule is off)."""
        if not self.when.active(info):
            return 0.0
        if self.adaptive_scale:
            if info.timestep is None:
                raise SteeringError(f"PerturbedGuidance(adaptive_scale={self.adaptive_scale}) decays with the timestep, "
                                    "but this forward has none (pass the timestep to the transformer, or set "
                                    "adaptive_scale=0)")
            return max(self.scale - self.adaptive_scale * (1000.0 - info.timestep), 0.0)
        return self.scale
