"""Which denoising step a forward of the transformer belongs to.

A *step* is the scheduler's step: one update of the latents. Most schedulers call the model once
per step (per guidance branch); second-order ones (Heun, KDPM2: ``scheduler.order == 2``) call it
twice, with the timesteps repeated (``[t0, t1, t1, t2, t2, ...]``), and both calls belong to the
same step. So the step of a forward is ``index // order``, with ``index`` the scheduler's position
in its timesteps (``scheduler.step_index``; before its first update, the matching timestep), and a
run has ``ceil(len(timesteps) / order)`` steps — the ``num_inference_steps`` the user asked for.
Without a pipeline (a bare transformer) steps are counted from decreasing timesteps.

A transformer shared by several pipelines (e.g. a T2V and an I2V pipeline built from the same
components) takes its step from the pipeline that is running: the one whose denoising loop has a
current timestep (diffusers pipelines set ``_current_timestep`` during the loop), else the one of
the session entered last.

Diffusion forcing (per-frame timesteps, SkyReels-V2 ``SkyReelsV2DiffusionForcing*Pipeline``): each latent
frame has its own scheduler and noise level, and frames advance in a staggered way. A forward's ``step``
stays the rule above applied to its largest timestep (the step of its noisiest frame); in addition each
frame gets its *own step*: the number of the run's scheduled timesteps above the frame's timestep. A frame
at ``timesteps[k]`` is in its step ``k`` (the same index a synchronous run gives); a frame still waiting at
pure noise (t >= timesteps[0]) is in step 0; a finished or clean history frame (t = 0, or the small
``addnoise_condition`` timestep) is past the last step (step ``num_steps`` or just below). Schedules are
evaluated per frame on these (``Schedule.active_frames``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import attrs
import torch

from ..errors import ConfigError
from ..language.schedules import StepInfo
from ..validation import integer, real_number

LOOP_BRANCHES = ("cond", "uncond")


@attrs.frozen
class LoopPosition:
    """Where a user's own denoising loop is, as ``.step()`` states it: the step index, the guidance branch of every
    row of the forwards inside it (None: the adapter's answer), and the timestep (None: the adapter's answer)."""

    index: int
    branch: str | None = None
    timestep: float | None = None


class LoopSteps:
    """``.step(index, branch=None)`` on the objects ``at.steer`` and ``at.inspect`` yield: a user's own sampling
    loop says which step (and branch) its forwards belong to, so schedules, branch filters and recordings work on a
    bare model whose adapter cannot tell."""

    _controllers: list[Any] = []  # the controllers of the active session (set by it, emptied on exit)

    @contextlib.contextmanager
    def step(self, index: int, branch: str | None = None, *, timestep: float | None = None) -> Iterator[Any]:
        """Forwards inside the block belong to step ``index`` (0-based) and, if given, to guidance ``branch``
        (``"cond"`` or ``"uncond"``) and ``timestep``. Blocks nest; the outer position returns on exit."""
        position = LoopPosition(
            integer(index, ".step(index)", minimum=0),
            _branch(branch),
            None if timestep is None else real_number(timestep, ".step(timestep=...)"),
        )
        controllers = list(self._controllers)
        if not controllers:
            raise ConfigError(".step() works inside the session's with block: `with at.steer(model, ...) as s: "
                              "with s.step(i, branch='cond'): model(...)`")
        for controller in controllers:
            limit = controller.steps.num_steps
            if limit is not None and position.index >= limit:
                raise ConfigError(f".step(index) must be < num_steps={limit} given to the session, got {index!r}")
        previous = [(c, c.position) for c in controllers]
        for controller in controllers:
            controller.position = position
        try:
            yield self
        finally:
            for controller, before in previous:
                controller.position = before


def _branch(branch: object) -> str | None:
    if branch is not None and branch not in LOOP_BRANCHES:
        raise ConfigError(f".step(branch=...) must be one of {LOOP_BRANCHES} or None, got {branch!r}")
    return branch  # type: ignore[return-value]


class StepTracker:
    """Step index and count of each forward: from the pipeline's scheduler when there is one,
    otherwise by counting distinct (decreasing) timesteps."""

    def __init__(self) -> None:
        self.pipelines: list[Any] = []
        self.num_steps: int | None = None
        self._last_t: float | None = None
        self._step = 0

    def add_pipeline(self, pipeline: Any) -> None:
        """A pipeline whose runs this transformer's forwards may belong to."""
        if all(p is not pipeline for p in self.pipelines):
            self.pipelines.append(pipeline)

    @property
    def pipeline(self) -> Any:
        """The running pipeline (inside its denoising loop), else the one added last, else None."""
        running = [p for p in self.pipelines if getattr(p, "_current_timestep", None) is not None]
        return running[-1] if running else (self.pipelines[-1] if self.pipelines else None)

    def at_position(self, position: LoopPosition, timestep: float | None) -> StepInfo:
        """The step facts of a forward inside a user's ``.step()`` block (its timestep, else the adapter's)."""
        return StepInfo(step=position.index, num_steps=self.num_steps,
                        timestep=position.timestep if position.timestep is not None else timestep)

    def info(self, timestep: float | None, frame_timesteps: tuple[float, ...] | None = None) -> StepInfo:
        """The step facts of one forward; ``frame_timesteps``: each latent frame's own timestep (diffusion forcing)."""
        scheduler = getattr(self.pipeline, "scheduler", None)
        scheduled = getattr(scheduler, "timesteps", None)
        if timestep is not None and isinstance(scheduled, torch.Tensor) and scheduled.numel():
            order = max(1, int(getattr(scheduler, "order", 1) or 1))
            index = getattr(scheduler, "step_index", None)
            grid = None if isinstance(index, int) and frame_timesteps is None else scheduled.detach().float().cpu()
            if not isinstance(index, int):
                index = _first_index(scheduler, grid, timestep)
            frames = None if frame_timesteps is None else tuple(own_step(grid, t, order) for t in frame_timesteps)
            return StepInfo(step=index // order, num_steps=math.ceil(scheduled.numel() / order), timestep=timestep,
                            frame_timesteps=frame_timesteps, frame_steps=frames)
        if frame_timesteps is not None:
            return attrs.evolve(self.info(timestep), frame_timesteps=frame_timesteps,
                                frame_steps=(None,) * len(frame_timesteps))
        if timestep is None:
            return StepInfo(step=None, num_steps=self.num_steps, timestep=None)
        if self._last_t is None or timestep > self._last_t:
            self._step = 0
        elif timestep < self._last_t:
            self._step += 1
        self._last_t = timestep
        return StepInfo(step=self._step, num_steps=self.num_steps, timestep=timestep)


def _first_index(scheduler: Any, grid: torch.Tensor, timestep: float) -> int:
    """The scheduler's position for a forward made while its ``step_index`` is unset: the scheduled timestep equal
    to the forward's; where none is (a model fed another scale, e.g. Cosmos' sigma / (sigma + 1)), a scheduler
    that counts its updates has made none yet, so its first step (``begin_index`` or 0); else the nearest one.
    ``grid``: the scheduled timesteps as a float CPU tensor."""
    distance = (grid - timestep).abs()
    nearest = int(distance.argmin())
    if float(distance[nearest]) <= 1e-3 * max(1.0, abs(timestep)) or not hasattr(scheduler, "_step_index"):
        return nearest
    begin = getattr(scheduler, "begin_index", None)
    return begin if isinstance(begin, int) else 0


def own_step(scheduled: torch.Tensor, timestep: float, order: int = 1) -> int:
    """A frame's own step: how many of the scheduled timesteps lie above its timestep (ties count as reached),
    in scheduler steps of ``order`` model calls."""
    tolerance = 1e-3 * max(1.0, abs(timestep))
    return int((scheduled > timestep + tolerance).sum()) // order
