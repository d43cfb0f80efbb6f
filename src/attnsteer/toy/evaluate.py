"""The toy experiment: DyMoS on the shipped toy model, measured against the motion each prompt asked for.

Metrics that know the toy world's truth (the sprite's colour, velocity and size): where the sprite
is (tracked by colour), how fast and which way it moves, whether it keeps its size and colour
(identity), whether the background stays intact. :func:`run_experiment` runs the gamma sweep that
``attnsteer demo`` and ``python -m attnsteer.toy.evaluate`` report; :func:`summarise` turns it into
one row per gamma.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..figures.metrics import psnr
from ..figures.videoio import as_frames
from .world import SPEEDS, Clip

COLOUR_TOLERANCE = 0.35  # RGB distance at which a pixel stops counting as sprite
CORE_TOLERANCE = 0.05  # a true sprite pixel this close to the colour is covered fully (not an edge)
DIRECTIONS_IN_TURN = ("right", "down", "left", "up")  # the evaluation clips cycle through these
GAMMAS = (-1.0, -0.5, 0.0, 0.5, 1.0)
STEPS = 10  # denoising steps of the demo and of toy studies (the sprite is as good as at 20: docs/toy.md)
SPEED = "slow"  # the evaluation prompts' speed word: half the world's top speed, so motion has room to grow
STOP = 0.3  # fraction of steps DyMoS modulates: 6 of the toy's 20
CLIP_SEEDS = (101, 202, 303, 404, 505, 606, 707, 808)
FIRST_STEPS = 0.1  # the image-to-video minus text-to-video analysis covers this fraction of the steps
SIZE_KEPT = (2 / 3, 3 / 2)  # sprite-coloured area per generated frame, as a multiple of the true sprite's
COLOUR_KEPT = 0.15  # RGB distance of the best-matching sprite-sized pixel set to the sprite's colour


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


def _sprite_distance(video: Any, clip: Clip) -> np.ndarray:
    """[T, H*W] RGB distance of every pixel to the clip's sprite colour."""
    frames = as_frames(video).astype(np.float32) / 255.0
    return np.linalg.norm(frames - clip.colour, axis=-1).reshape(len(frames), -1)


def identity(video: Any, clip: Clip) -> dict[str, float]:
    """Does the sprite keep its size and colour? Over the generated frames 1..:

    - ``size``: pixels within COLOUR_TOLERANCE of the sprite colour, divided by the same count in the
      true clip's frame (1 = kept; below 1 the sprite fades or shrinks, above it grows or smears);
      the mean over frames, and ``size_worst``, the frame furthest from 1 (by ratio).
    - ``colour_err``: the mean RGB distance (0..1.7) to the sprite colour of the pixels nearest to it,
      as many as the true sprite covers fully (its edges are blended with the background): near 0
      when a sprite of that colour and size is there.
    - ``kept``: 1.0 when every generated frame has size within SIZE_KEPT and colour_err within COLOUR_KEPT.
    """
    generated, truth = _sprite_distance(video, clip)[1:], _sprite_distance(clip.video, clip)[1:]
    if generated.shape != truth.shape:
        raise ConfigError(f"video must have the clip's shape {clip.video.shape}, got {as_frames(video).shape}")
    ratio = (generated < COLOUR_TOLERANCE).sum(axis=1) / (truth < COLOUR_TOLERANCE).sum(axis=1)
    core = np.maximum((truth < CORE_TOLERANCE).sum(axis=1), 1)
    nearest = np.sort(generated, axis=1)
    colour = np.array([row[:k].mean() for row, k in zip(nearest, core)])
    worst = ratio[np.argmax(np.abs(np.log(np.maximum(ratio, 1e-3))))]
    kept = bool(((ratio >= SIZE_KEPT[0]) & (ratio <= SIZE_KEPT[1]) & (colour <= COLOUR_KEPT)).all())
    return {"size": float(ratio.mean()), "size_worst": float(worst), "colour_err": float(colour.mean()),
            "kept": float(kept)}


def sprite_speed(video: Any, clip: Clip) -> float:
    """Speed of the tracked sprite in px/frame (the clip's true speed is ``np.hypot(*clip.velocity)``)."""
    return float(np.linalg.norm(sprite_velocity(video, clip)))


def evaluation_clips(count: int, seeds: Sequence[int] = CLIP_SEEDS, speed: str = SPEED) -> list[Clip]:
    """``count`` clips from ``seeds`` (cycled past their end), prompts right, down, left, up in turn."""
    from .world import sample_clip

    return [sample_clip(seeds[i % len(seeds)] + 1000 * (i // len(seeds)), f"{DIRECTIONS_IN_TURN[i % 4]} {speed}")
            for i in range(count)]


def generate(pipe: Any, clips: Sequence[Clip], steps: int, seed: int = 0, guidance_scale: float | None = None,
             image: bool = True, **kwargs: Any) -> list[np.ndarray]:
    """One video per clip (its reference frame, unless ``image`` is False, and its prompt; seed + i),
    generated in one batch."""
    import torch

    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    return pipe(image=[c.video[0] for c in clips] if image else None, prompt=[c.prompt for c in clips],
                num_inference_steps=steps,
                generator=[torch.Generator().manual_seed(seed + i) for i in range(len(clips))], **guidance,
                **kwargs).frames


def run_experiment(pipe: Any, clips: Sequence[Clip], steps: int, gammas: Sequence[float] = GAMMAS, seed: int = 0,
                   guidance_scale: float | None = None) -> dict[float, Any]:
    """The DyMoS sweep on ``clips``: per gamma a :class:`attnsteer.sweeps.sweep.SweepResult` (videos, recording)."""
    from ..sweeps.sweep import steer_sweep

    return steer_sweep(pipe, lambda: generate(pipe, clips, steps, seed, guidance_scale), gammas, stop=STOP,
                       desc="DyMoS sweep")


def record_t2v(pipe: Any, clips: Sequence[Clip], steps: int, seed: int = 0) -> Any:
    """The recording of the same prompts and seeds without the image (text-to-video), over the first
    FIRST_STEPS of the steps only (the run is interrupted there, as diffusers' ``interrupt`` does)."""
    from ..session import inspect

    first = first_steps(steps)

    def stop_after_first(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        pipeline._interrupt = step + 1 >= len(first)
        return callback_kwargs

    with inspect(pipe) as rec:
        generate(pipe, clips, steps, seed, image=False, callback_on_step_end=stop_after_first)
    return rec


def first_steps(steps: int) -> list[int]:
    """The step indices of the image-to-video minus text-to-video analysis (at least one)."""
    return list(range(max(1, round(FIRST_STEPS * steps))))


def steered_steps(steps: int) -> list[int]:
    """The step indices DyMoS modulates in the experiment."""
    return [s for s in range(steps) if s / steps < STOP]


COLUMNS = {
    "gamma": "DyMoS gamma (0: vanilla; > 0 less attention to the reference frame)",
    "flow": "optical flow, mean px per frame pair (motion)",
    "frame_diff": "mean squared difference of consecutive frames (motion)",
    "ssim_later": "SSIM of frames 1.. to the reference image (fidelity, 1 = identical)",
    "bg_psnr": "PSNR (dB) of the background the sprite never covers, to the reference (scene intact)",
    "speed": f"speed of the colour-tracked sprite, px/frame (the prompts ask for {SPEEDS[SPEED]:g})",
    "motion_err": "|tracked - true| sprite velocity, px/frame",
    "dir_ok": "fraction of clips whose sprite moves in the prompt's direction (chance 0.25)",
    "size": "sprite-coloured area / the true sprite's (1 = size kept; < 1 fades, > 1 smears)",
    "colour_err": "RGB distance of the best sprite-sized pixel set to the sprite colour (0 = kept)",
    "kept": f"fraction of clips whose sprite keeps size ({SIZE_KEPT[0]:.2f}-{SIZE_KEPT[1]:.1f}x) and "
            f"colour (<= {COLOUR_KEPT}) in every frame",
    "ref_mass": "attention mass of generated frames on the reference frame, steered steps, cond branch",
}


def per_clip(videos: Sequence[np.ndarray], clips: Sequence[Clip]) -> list[dict[str, float]]:
    """The toy metrics of each video against its clip."""
    from ..figures import metrics

    rows = []
    for video, clip in zip(videos, clips, strict=True):
        general = metrics.evaluate(video, clip.video[0])
        rows.append({"flow": general["flow"], "frame_diff": general["frame_diff"], "ssim_later": general["ssim_later"],
                     "bg_psnr": background_psnr(video, clip), "speed": sprite_speed(video, clip),
                     "motion_err": motion_error(video, clip), "dir_ok": float(bool(direction_correct(video, clip))),
                     **identity(video, clip)})
    return rows


def summarise(results: dict[float, Any], clips: Sequence[Clip], steps: int) -> list[dict[str, Any]]:
    """One row per gamma (the COLUMNS), averaged over the clips; ``clip_rows`` holds the per-clip values."""
    rows = []
    for gamma, result in results.items():
        clip_rows = per_clip(result.videos, clips)
        row: dict[str, Any] = {"gamma": gamma}
        for key in COLUMNS:
            if key not in ("gamma", "ref_mass"):
                row[key] = float(np.mean([c[key] for c in clip_rows]))
        row["ref_mass"] = float(result.record.reference_mass(by="step", steps=steered_steps(steps),
                                                             branch="cond")[1].mean())
        row["clip_rows"] = clip_rows
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary table with a legend of its columns."""
    from ..figures import metrics

    legend = "\n".join(f"  {name:<10}  {meaning}" for name, meaning in COLUMNS.items())
    return metrics.format_table(rows, columns=list(COLUMNS)) + "\n\nmeans over the clips:\n" + legend


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
    """Compare toy weights (default: the shipped ones): motion, identity, prompt following and reference
    mass against gamma.

        python -m attnsteer.toy.evaluate [WEIGHTS.safetensors ...] [--device cuda] [--clips 8]
        python -m attnsteer.toy.evaluate [WEIGHTS.safetensors ...] --prompt-following 48   # vanilla only
    """
    import argparse
    from pathlib import Path

    import torch

    from .model import WEIGHTS
    from .pipeline import ToyI2VPipeline
    from .train import positive_int

    def weights_file(text: str) -> Path:
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"no such file: {text!r}")
        return Path(text)

    def guidance(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value >= 1 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a finite number >= 1, got {text!r}")
        return value

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=weights_file, nargs="*", default=[WEIGHTS],
                        help="toy weights as written by attnsteer.toy.train (default: the shipped weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", type=positive_int, default=8)
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--guidance", type=guidance, help="guidance scale (default: the pipeline's, 3; 1: no "
                                                          "unconditional branch)")
    parser.add_argument("--speed", choices=("slow", "fast"), default=SPEED,
                        help=f"the prompts' speed word (default: {SPEED})")
    parser.add_argument("--gammas", type=float, nargs="+", default=list(GAMMAS), metavar="G",
                        help=f"DyMoS strengths to compare (default: {' '.join(map(str, GAMMAS))})")
    parser.add_argument("--prompt-following", type=positive_int, metavar="N",
                        help="instead of the sweep: direction accuracy of N vanilla videos")
    args = parser.parse_args(argv)
    clips = evaluation_clips(args.clips, seeds=tuple(range(1000, 1000 + args.clips)), speed=args.speed)
    for path in args.weights:
        pipe = ToyI2VPipeline.from_weights(path, device=args.device)
        print(f"## {path.name if path == WEIGHTS else path}")
        if args.prompt_following:
            correct, error = prompt_following(pipe, args.prompt_following, args.steps, args.guidance)
            print(f"direction right in {correct} of {args.prompt_following} (chance {args.prompt_following / 4:g}); "
                  f"motion error {error:.3f} px/frame", flush=True)
        else:
            results = run_experiment(pipe, clips, args.steps, gammas=args.gammas, guidance_scale=args.guidance)
            print(table(summarise(results, clips, args.steps)), flush=True)
        del pipe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
