"""Schedules: in which denoising steps a rule is on.

A schedule answers ``active(step)`` for a :class:`StepInfo` (step index, number of steps, timestep)
that the session derives from the pipeline for every forward of the model.

Per-frame timesteps (diffusion forcing, e.g. SkyReels-V2): where a forward's latent frames sit at
different noise levels, its :class:`StepInfo` also carries each frame's own timestep and step
(``frame_timesteps``, ``frame_steps``; see :mod:`attnsteer.runtime.stepping` for what a frame's step is), and
``Schedule.active_frames`` evaluates the schedule once per frame. A rule is then on for the query tokens
of the frames whose own step it selects, and off for the others.
"""

from __future__ import annotations

import math

import attrs

from ..errors import ConfigError
from ..validation import integer, real_number


@attrs.frozen
class StepInfo:
    """Where the denoising loop is for one forward; fields are None where the session cannot tell."""

    step: int | None = None
    num_steps: int | None = None
    timestep: float | None = None
    frame_timesteps: tuple[float, ...] | None = None  # per latent frame of the forward, where frames differ
    frame_steps: tuple[int | None, ...] | None = None  # each frame's own step (None where unknown)

    def frame(self, index: int) -> StepInfo:
        """The step facts of latent frame ``index`` alone (its own step and timestep)."""
        if self.frame_timesteps is None:
            return self
        step = self.frame_steps[index] if self.frame_steps is not None else None
        return StepInfo(step=step, num_steps=self.num_steps, timestep=self.frame_timesteps[index])


_HOW_TO_TELL_THE_STEP = ("steer the pipeline (not its transformer), or, in a loop of your own, run each forward "
                         "inside `with session.step(i):` on the object at.steer / at.inspect yields")


class MissingStepInfo(ConfigError):
    """A schedule needs a step fact (index, count or timestep) that this call does not provide."""


class Schedule:
    """Base class: decides per forward whether a rule is on."""

    def active(self, info: StepInfo) -> bool:
        raise NotImplementedError

    def active_frames(self, info: StepInfo) -> tuple[bool, ...] | None:
        """Per latent frame, whether the schedule is on at that frame's own step; None when the forward has no
        per-frame timesteps (then ``active`` decides for the whole forward)."""
        if info.frame_timesteps is None:
            return None
        return tuple(self.active(info.frame(f)) for f in range(len(info.frame_timesteps)))


def _int_at_least(name: str, minimum: int, optional: bool = False):
    def convert(value: object) -> int | None:
        if value is None and optional:
            return None
        return integer(value, f"steps({name}=...)", minimum)

    return convert


def _fraction(name: str):
    def convert(value: object) -> float:
        number = real_number(value, f"progress({name}=...)")
        if not 0.0 <= number <= 1.0:
            raise ConfigError(f"progress({name}=...) must be a number in [0, 1], got {value!r}")
        return number

    return convert


def _timestep(name: str):
    def convert(value: object) -> float:
        return real_number(value, f"timesteps({name}=...)", allow_inf=True)

    return convert


@attrs.frozen(repr=False)
class Steps(Schedule):
    """Step indices ``start <= step < stop`` (``stop=None``: to the end)."""

    start: int = attrs.field(default=0, converter=_int_at_least("start", 0))
    stop: int | None = attrs.field(default=None, converter=_int_at_least("stop", 1, optional=True))

    def __attrs_post_init__(self) -> None:
        if self.stop is not None and self.stop <= self.start:
            raise ConfigError(f"steps(stop=...) must be greater than start ({self.start}), got {self.stop}")

    def active(self, info: StepInfo) -> bool:
        if info.step is None:
            raise MissingStepInfo(f"{self!r} needs the denoising step index, which is unknown for this call: "
                                  f"{_HOW_TO_TELL_THE_STEP}")
        return info.step >= self.start and (self.stop is None or info.step < self.stop)

    def __repr__(self) -> str:
        return f"steps(start={self.start}, stop={self.stop})"


@attrs.frozen(repr=False)
class Progress(Schedule):
    """Fraction of the run's steps: on while ``start <= step / num_steps < stop`` (``<= stop`` with
    ``include_stop=True``, as methods written ``t_now >= tau`` with ``t_now = 1 - i / N`` have it)."""

    start: float = attrs.field(default=0.0, converter=_fraction("start"))
    stop: float = attrs.field(default=1.0, converter=_fraction("stop"))
    include_stop: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        if self.stop <= self.start:
            raise ConfigError(f"progress(stop=...) must be greater than start ({self.start}), got {self.stop}")

    def active(self, info: StepInfo) -> bool:
        if info.step is None or info.num_steps is None:
            raise MissingStepInfo(
                f"{self!r} needs the step index and the number of steps"
                + ("; pass num_steps= to at.steer / at.inspect" if info.step is not None and info.num_steps is None
                   else f" ({'index' if info.step is None else 'count'} unknown for this call): "
                   f"{_HOW_TO_TELL_THE_STEP}, and pass num_steps= for a bare model")
            )
        fraction = info.step / info.num_steps
        return self.start <= fraction and (fraction <= self.stop if self.include_stop else fraction < self.stop)

    def __repr__(self) -> str:
        closed = ", include_stop=True" if self.include_stop else ""
        return f"progress(start={self.start}, stop={self.stop}{closed})"


@attrs.frozen(repr=False)
class Timesteps(Schedule):
    """Timestep values ``low <= t <= high`` (in the scheduler's own scale)."""

    high: float = attrs.field(converter=_timestep("high"))
    low: float = attrs.field(default=-math.inf, converter=_timestep("low"))

    def __attrs_post_init__(self) -> None:
        if self.low > self.high:
            raise ConfigError(f"timesteps(low=...) must be <= high ({self.high}), got {self.low}")

    def active(self, info: StepInfo) -> bool:
        if info.timestep is None:
            raise MissingStepInfo(f"{self!r} needs the timestep, which is unknown for this call: pass it to the model "
                                  "as the argument the adapter reads (GenericAdapter(timestep='t')) or state it with "
                                  ".step(i, timestep=t)")
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
