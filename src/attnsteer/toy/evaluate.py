"""Motion of generated toy videos against the motion their prompt asked for."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..metrics import optical_flow, psnr
from ..videoio import as_frames
from .world import Clip, velocity_of

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


def background_psnr(video: Any, clip: Clip) -> float:
    """Mean PSNR (dB) of the generated frames 1.. against the reference frame, on the pixels the true
    sprite never covers in ``clip``: does the scene stay intact while the sprite moves?"""
    frames = as_frames(video)
    truth = as_frames(clip.video)
    background = (truth == truth[0]).all(axis=(0, 3))
    if frames.shape != truth.shape or not background.any():
        raise ConfigError(f"video {frames.shape} must match the clip {truth.shape} and leave background pixels")
    return float(np.mean([psnr(f[background][None], truth[0][background][None]) for f in frames[1:]]))


def main(argv: list[str] | None = None) -> None:
    """Compare toy weights: motion, fidelity, prompt following and reference mass against gamma.

        python -m attnsteer.toy.evaluate WEIGHTS.safetensors [...] [--device cuda] [--clips 8]
    """
    import argparse
    from pathlib import Path

    import torch

    from .. import metrics
    from ..demo import GAMMAS, generate_sweep, summarise
    from .pipeline import ToyI2VPipeline
    from .world import sample_clip

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path, nargs="+")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    directions = ("right", "down", "left", "up")
    clips = [sample_clip(1000 + i, f"{directions[i % 4]} fast") for i in range(args.clips)]
    for path in args.weights:
        pipe = ToyI2VPipeline.from_weights(path, device=args.device)
        results = generate_sweep(pipe, clips, GAMMAS, args.steps, seed=0)
        print(f"## {path}")
        print(metrics.format_table(summarise(results, clips, args.steps)), flush=True)
        del pipe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
