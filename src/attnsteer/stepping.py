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
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .schedules import StepInfo


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

    def info(self, timestep: float | None) -> StepInfo:
        scheduler = getattr(self.pipeline, "scheduler", None)
        scheduled = getattr(scheduler, "timesteps", None)
        if timestep is not None and isinstance(scheduled, torch.Tensor) and scheduled.numel():
            order = max(1, int(getattr(scheduler, "order", 1) or 1))
            index = getattr(scheduler, "step_index", None)
            if not isinstance(index, int):
                index = _first_index(scheduler, scheduled, timestep)
            return StepInfo(step=index // order, num_steps=math.ceil(scheduled.numel() / order), timestep=timestep)
        if timestep is None:
            return StepInfo(step=None, num_steps=self.num_steps, timestep=None)
        if self._last_t is None or timestep > self._last_t:
            self._step = 0
        elif timestep < self._last_t:
            self._step += 1
        self._last_t = timestep
        return StepInfo(step=self._step, num_steps=self.num_steps, timestep=timestep)


def _first_index(scheduler: Any, scheduled: torch.Tensor, timestep: float) -> int:
    """The scheduler's position for a forward made while its ``step_index`` is unset: the scheduled timestep equal
    to the forward's; where none is (a model fed another scale, e.g. Cosmos' sigma / (sigma + 1)), a scheduler
    that counts its updates has made none yet, so its first step (``begin_index`` or 0); else the nearest one."""
    distance = (scheduled.detach().float().cpu() - timestep).abs()
    nearest = int(distance.argmin())
    if float(distance[nearest]) <= 1e-3 * max(1.0, abs(timestep)) or not hasattr(scheduler, "_step_index"):
        return nearest
    begin = getattr(scheduler, "begin_index", None)
    return begin if isinstance(begin, int) else 0
