"""Motion of generated toy videos against the motion their prompt asked for."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..metrics import psnr
from ..videoio import as_frames
from .world import Clip

COLOUR_TOLERANCE = 0.35  # RGB distance at which a pixel stops counting as sprite
DIRECTIONS_IN_TURN = ("right", "down", "left", "up")  # the evaluation clips cycle through these


def sprite_track(video: Any, clip: Clip) -> np.ndarray:
    """[T, 2] centre (x, y) of the sprite-coloured pixels per frame (NaN where none): each pixel weighs
    1 - distance / COLOUR_TOLERANCE to the clip's sprite colour, so smeared or split sprites still count."""
    frames = as_frames(video).astype(np.float32) / 255.0
    weight = np.clip(1 - np.linalg.norm(frames - clip.colour, axis=-1) / COLOUR_TOLERANCE, 0, None)
    y, x = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]] + 0.5
    total = weight.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(weight * x).sum(axis=(1, 2)) / total, (weight * y).sum(axis=(1, 2)) / total], axis=1)


def sprite_velocity(video: Any, clip: Clip) -> np.ndarray:
    """Estimated sprite velocity (dx, dy) px/frame: least-squares slope of :func:`sprite_track`
    (zeros when the sprite is found in fewer than two frames)."""
    track = sprite_track(video, clip)
    found = ~np.isnan(track).any(axis=1)
    if found.sum() < 2:
        return np.zeros(2)
    return np.polyfit(np.flatnonzero(found), track[found], 1)[0]


def motion_error(video: Any, clip: Clip) -> float:
    """|estimated - true| sprite velocity in px/frame."""
    return float(np.linalg.norm(sprite_velocity(video, clip) - np.array(clip.velocity)))


def direction_correct(video: Any, clip: Clip) -> bool | None:
    """Whether the dominant motion axis and sign match the clip's prompt (None for "still" prompts)."""
    true = np.array(clip.velocity)
    if not true.any():
        return None
    estimate = sprite_velocity(video, clip)
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


def prompt_following(pipe: Any, count: int, steps: int = 20, guidance_scale: float | None = None) -> tuple[int, float]:
    """Vanilla videos of ``count`` clips (seeds 5000.., directions in turn, half slow and half fast):
    how many move the tracked sprite in the prompt's direction, and the mean motion error."""
    import torch

    from .world import sample_clip

    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    correct, errors = 0, []
    for i in range(count):
        clip = sample_clip(5000 + i, f"{DIRECTIONS_IN_TURN[i % 4]} {'fast' if i % 8 < 4 else 'slow'}")
        video = pipe(image=clip.video[0], prompt=clip.prompt, num_inference_steps=steps,
                     generator=torch.Generator().manual_seed(i), **guidance).frames[0]
        correct += bool(direction_correct(video, clip))
        errors.append(motion_error(video, clip))
    return correct, float(np.mean(errors))


def main(argv: list[str] | None = None) -> None:
    """Compare toy weights: motion, fidelity, prompt following and reference mass against gamma.

        python -m attnsteer.toy.evaluate WEIGHTS.safetensors [...] [--device cuda] [--clips 8]
        python -m attnsteer.toy.evaluate WEIGHTS.safetensors --prompt-following 48   # vanilla only
    """
    import argparse
    from pathlib import Path

    import torch

    from .. import metrics
    from ..demo import GAMMAS, generate_sweep, summarise
    from .pipeline import ToyI2VPipeline
    from .train import positive_int
    from .world import sample_clip

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path, nargs="+")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", type=positive_int, default=8)
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's, 3)")
    parser.add_argument("--prompt-following", type=positive_int, metavar="N",
                        help="instead of the sweep: direction accuracy of N vanilla videos")
    args = parser.parse_args(argv)
    clips = [sample_clip(1000 + i, f"{DIRECTIONS_IN_TURN[i % 4]} fast") for i in range(args.clips)]
    for path in args.weights:
        pipe = ToyI2VPipeline.from_weights(path, device=args.device)
        print(f"## {path}")
        if args.prompt_following:
            correct, error = prompt_following(pipe, args.prompt_following, args.steps, args.guidance)
            print(f"direction right in {correct} of {args.prompt_following} (chance {args.prompt_following / 4:g}); "
                  f"motion error {error:.3f} px/frame", flush=True)
        else:
            results = generate_sweep(pipe, clips, GAMMAS, args.steps, seed=0, guidance_scale=args.guidance)
            print(metrics.format_table(summarise(results, clips, args.steps)), flush=True)
        del pipe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
