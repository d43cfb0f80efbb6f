"""Motion of generated toy videos against the motion their prompt asked for."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics import optical_flow
from .world import velocity_of

MOVING_PX = 0.3  # flow magnitude (pixels/frame) above which a pixel counts as moving


def sprite_velocity(video: Any) -> np.ndarray:
    """Estimated sprite velocity (dx, dy) px/frame: mean flow over the pixels that move (zeros if none)."""
    flow = optical_flow(video).reshape(-1, 2)
    moving = np.linalg.norm(flow, axis=1) > MOVING_PX
    return flow[moving].mean(axis=0) if moving.any() else np.zeros(2)


def motion_error(video: Any, prompt: str) -> float:
    """|estimated - true| sprite velocity in px/frame."""
    return float(np.linalg.norm(sprite_velocity(video) - np.array(velocity_of(prompt))))


def direction_correct(video: Any, prompt: str) -> bool | None:
    """Whether the dominant motion axis and sign match the prompt (None for "still" prompts)."""
    true = np.array(velocity_of(prompt))
    if not true.any():
        return None
    estimate = sprite_velocity(video)
    axis = int(np.argmax(np.abs(true)))
    return bool(np.sign(estimate[axis]) == np.sign(true[axis]) and abs(estimate[axis]) >= abs(estimate[1 - axis]))
