"""Schedules: in which denoising steps a rule is on.

A schedule answers ``active(step)`` for a :class:`StepInfo` (step index, number of steps, timestep)
that the session derives from the pipeline for every forward of the model.
"""

from __future__ import annotations

import math

import attrs

from .errors import ConfigError


@attrs.frozen
class StepInfo:
    """Where the denoising loop is for one forward; fields are None where the session cannot tell."""

    step: int | None = None
    num_steps: int | None = None
    timestep: float | None = None


class MissingStepInfo(ConfigError):
    """A schedule needs a step fact (index, count or timestep) that this call does not provide."""


class Schedule:
    """Base class: decides per forward whether a rule is on."""

    def active(self, info: StepInfo) -> bool:
        raise NotImplementedError


def _int_at_least(minimum: int):
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if value is None and attribute.name == "stop":
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"steps({attribute.name}=...) must be an int >= {minimum}, got {value!r}")

    return check


def _fraction(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"progress({attribute.name}=...) must be a number in [0, 1], got {value!r}")


def _finite(name: str):
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise ConfigError(f"{name}({attribute.name}=...) must be a number (not NaN), got {value!r}")

    return check


@attrs.frozen(repr=False)
class Steps(Schedule):
    """Step indices ``start <= step < stop`` (``stop=None``: to the end)."""

    start: int = attrs.field(default=0, validator=_int_at_least(0))
    stop: int | None = attrs.field(default=None, validator=_int_at_least(1))

    def __attrs_post_init__(self) -> None:
        if self.stop is not None and self.stop <= self.start:
            raise ConfigError(f"steps(stop=...) must be greater than start ({self.start}), got {self.stop}")

    def active(self, info: StepInfo) -> bool:
        if info.step is None:
            raise MissingStepInfo(f"{self!r} needs the denoising step index, which is unknown for this call")
        return info.step >= self.start and (self.stop is None or info.step < self.stop)

    def __repr__(self) -> str:
        return f"steps(start={self.start}, stop={self.stop})"


@attrs.frozen(repr=False)
class Progress(Schedule):
    """Fraction of the run's steps: on while ``start <= step / num_steps < stop``."""

    start: float = attrs.field(default=0.0, validator=_fraction)
    stop: float = attrs.field(default=1.0, validator=_fraction)

    def __attrs_post_init__(self) -> None:
        if self.stop <= self.start:
            raise ConfigError(f"progress(stop=...) must be greater than start ({self.start}), got {self.stop}")

    def active(self, info: StepInfo) -> bool:
        if info.step is None or info.num_steps is None:
            raise MissingStepInfo(
                f"{self!r} needs the step index and the number of steps; steer the pipeline (not its transformer) "
                "or pass num_steps= to at.steer"
            )
        fraction = info.step / info.num_steps
        return self.start <= fraction < self.stop

    def __repr__(self) -> str:
        return f"progress(start={self.start}, stop={self.stop})"


@attrs.frozen(repr=False)
class Timesteps(Schedule):
    """Timestep values ``low <= t <= high`` (in the scheduler's own scale)."""

    high: float = attrs.field(validator=_finite("timesteps"))
    low: float = attrs.field(default=-math.inf, validator=_finite("timesteps"))

    def __attrs_post_init__(self) -> None:
        if self.low > self.high:
            raise ConfigError(f"timesteps(low=...) must be <= high ({self.high}), got {self.low}")

    def active(self, info: StepInfo) -> bool:
        if info.timestep is None:
            raise MissingStepInfo(f"{self!r} needs the timestep, which is unknown for this call")
        return self.low <= info.timestep <= self.high

    def __repr__(self) -> str:
        return f"timesteps(high={self.high}, low={self.low})"


@attrs.frozen(repr=False)
class Always(Schedule):
    """On in every step."""

    def active(self, info: StepInfo) -> bool:
        return True

    def __repr__(self) -> str:
        return "always"


steps = Steps
progress = Progress
timesteps = Timesteps
always = Always()
