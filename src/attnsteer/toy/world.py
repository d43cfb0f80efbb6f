"""A procedural video world with known motion: one sprite moving over a textured, static background.

Every clip is drawn from a seed. The "prompt" names the motion in a two-word vocabulary
(direction, speed), so a generated video can be checked against the motion it was asked for.
"""

from __future__ import annotations

import attrs
import numpy as np

from ..errors import ConfigError

SIZE = 32
FRAMES = 9
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}
SPEEDS = {"slow": 1.0, "fast": 2.0}  # pixels per frame
SHAPES = ("square", "disc", "triangle")
NULL = "<null>"
VOCABULARY = (NULL, *DIRECTIONS, *SPEEDS)


@attrs.frozen
class Clip:
    """One clip: frames float32 [T, H, W, 3] in 0..1, its prompt, and the sprite's true velocity (dx, dy) px/frame."""

    video: np.ndarray
    prompt: str
    velocity: tuple[float, float]
    positions: np.ndarray  # [T, 2] sprite centre (x, y) per frame
    colour: np.ndarray  # [3] the sprite's RGB in 0..1


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(direction, speed) from a prompt like "right fast"; unknown words raise naming the vocabulary."""
    words = prompt.split()
    if len(words) != 2 or words[0] not in DIRECTIONS or words[1] not in SPEEDS:
        raise ConfigError(
            f"toy prompt must be '<direction> <speed>' with direction in {tuple(DIRECTIONS)} and speed in "
            f"{tuple(SPEEDS)}, got {prompt!r}"
        )
    return words[0], words[1]


def velocity_of(prompt: str) -> tuple[float, float]:
    direction, speed = parse_prompt(prompt)
    dx, dy = DIRECTIONS[direction]
    return dx * SPEEDS[speed], dy * SPEEDS[speed]


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour texture: stripes at a random angle and frequency plus a soft blob."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    a, b = rng.uniform(0.15, 0.6, 3), rng.uniform(0.15, 0.6, 3)
    angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    cx, cy = rng.uniform(0, 1, 2)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.08)
    mix = np.clip(0.7 * stripes + 0.3 * blob, 0, 1)[..., None]
    return (a * (1 - mix) + b * mix).astype(np.float32)


def _coverage(shape: str, size: float, cx: float, cy: float) -> np.ndarray:
    """Anti-aliased sprite coverage in [0, 1] for a sprite centred at (cx, cy)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    dx, dy = x - cx, y - cy
    r = size / 2
    if shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - r
    elif shape == "disc":
        distance = np.hypot(dx, dy) - r
    else:  # triangle pointing up: apex at (0, -r), base at dy = 0.8 r
        distance = np.maximum(dy - 0.8 * r, np.abs(dx) - (dy + r) / 1.8)
    return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)


def sample_clip(seed: int, prompt: str | None = None) -> Clip:
    """The clip of ``seed``; ``prompt`` fixes the motion, otherwise it is drawn too."""
    rng = np.random.default_rng(seed)
    if prompt is None:
        prompt = f"{rng.choice(list(DIRECTIONS))} {rng.choice(list(SPEEDS))}"
    vx, vy = velocity_of(prompt)
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = rng.uniform(7, 11)
    colour = rng.uniform(0, 1, 3)
    colour[rng.integers(3)] = 1.0  # saturated, so it stands out from the background
    travel = np.array([vx, vy]) * (FRAMES - 1)
    low = size / 2 + 1 - np.minimum(travel, 0)
    high = SIZE - size / 2 - 1 - np.maximum(travel, 0)
    start = rng.uniform(low, np.maximum(low, high))
    background = _background(rng)
    positions = start[None] + np.arange(FRAMES)[:, None] * np.array([vx, vy])[None]
    frames = []
    for cx, cy in positions:
        alpha = _coverage(shape, size, cx, cy)[..., None]
        frames.append(background * (1 - alpha) + colour.astype(np.float32) * alpha)
    return Clip(video=np.stack(frames), prompt=prompt, velocity=(vx, vy), positions=positions,
                colour=colour.astype(np.float32))


def sample_batch(seed: int, count: int) -> list[Clip]:
    """``count`` clips from consecutive seeds derived from ``seed``."""
    return [sample_clip(seed * 100_003 + i) for i in range(count)]
