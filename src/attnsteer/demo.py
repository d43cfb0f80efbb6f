"""``attnsteer demo``: DyMoS on the shipped toy image-to-video model, end to end.

For fixed seeds and reference images from the toy world it generates one video per gamma in
{-2, -1, 0, 0.6, 1}, records the attention, and writes: a video per gamma (the clips tiled),
a contact sheet, frame maps, reference mass against step for every gamma, the image-to-video
minus text-to-video frame map (the paper's Figure 2 analysis), motion and fidelity against gamma,
and a summary table (also printed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import attnsteer as at

from . import metrics, viz
from .videoio import save_video

GAMMAS = (-2.0, -1.0, 0.0, 0.6, 1.0)
STOP = 0.3  # fraction of steps modulated: 6 of the toy's 20
CLIP_SEEDS = (101, 202, 303, 404, 505, 606, 707, 808)
PROMPTS = ("right fast", "down fast", "left fast", "up fast") * 2
UPSCALE = 4


def _clips(quick: bool) -> list[Any]:
    from .toy import sample_clip

    count = 2 if quick else len(CLIP_SEEDS)
    return [sample_clip(seed, prompt) for seed, prompt in zip(CLIP_SEEDS[:count], PROMPTS[:count])]


def _tile(videos: list[np.ndarray], per_row: int = 4) -> np.ndarray:
    """Clips in rows of ``per_row``, upscaled by nearest neighbour so the 32 x 32 frames can be seen."""
    blank = np.zeros_like(videos[0])
    padded = videos + [blank] * (-len(videos) % per_row)
    rows = [np.concatenate(padded[i : i + per_row], axis=2) for i in range(0, len(padded), per_row)]
    grid = np.concatenate(rows, axis=1)
    return grid.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)


def generate_sweep(pipe: Any, clips: list[Any], gammas: tuple[float, ...], steps: int, seed: int,
                   guidance_scale: float | None = None) -> dict[float, Any]:
    """Per gamma: the generated videos and the recording (all clips pooled in one recording);
    ``guidance_scale`` None keeps the pipeline's default."""
    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    results = {}
    with tqdm(total=len(gammas) * len(clips), desc="demo: DyMoS sweep", unit="video") as bar:
        for gamma in gammas:
            videos = []
            with at.inspect(pipe) as rec, at.steer(pipe, at.recipes.dymos(gamma=gamma, stop=STOP)):
                for i, clip in enumerate(clips):
                    out = pipe(image=clip.video[0], prompt=clip.prompt, num_inference_steps=steps,
                               generator=_generator(seed + i), **guidance)
                    videos.append(out.frames[0])
                    bar.update()
            results[gamma] = {"videos": videos, "record": rec}
    return results


def _generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def record_t2v(pipe: Any, clips: list[Any], steps: int, seed: int) -> at.Record:
    """The same prompts and seeds with the image condition dropped (text-to-video)."""
    with at.inspect(pipe) as rec:
        for i, clip in enumerate(tqdm(clips, desc="demo: text-to-video reference", unit="video")):
            pipe(image=None, prompt=clip.prompt, num_inference_steps=steps, generator=_generator(seed + i))
    return rec


def summarise(results: dict[float, Any], clips: list[Any], steps: int) -> list[dict[str, Any]]:
    """One row per gamma: motion, fidelity and toy motion error averaged over the clips."""
    from .toy.evaluate import background_psnr, direction_correct, motion_error

    rows = []
    for gamma, result in results.items():
        per_clip = [metrics.evaluate(v, clip.video[0]) for v, clip in zip(result["videos"], clips)]
        row = {"gamma": gamma}
        for key in ("flow", "dynamic_degree", "frame_diff", "ssim_later"):
            row[key] = float(np.mean([m[key] for m in per_clip]))
        row["bg_psnr"] = float(np.mean([background_psnr(v, c) for v, c in zip(result["videos"], clips)]))
        row["motion_err"] = float(np.mean([motion_error(v, c) for v, c in zip(result["videos"], clips)]))
        row["dir_ok"] = float(np.mean([bool(direction_correct(v, c)) for v, c in zip(result["videos"], clips)]))
        steered = [s for s in result["record"].steps if s / steps < STOP]
        row["ref_mass"] = float(result["record"].reference_mass(by="step", steps=steered)[1].mean())
        rows.append(row)
    return rows


def run_demo(args: argparse.Namespace) -> int:
    """The demo command; returns the exit code."""
    from .toy import load_toy_pipeline

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    steps = 12 if args.quick else 20
    pipe = load_toy_pipeline()
    clips = _clips(args.quick)
    results = generate_sweep(pipe, clips, GAMMAS, steps, seed=0)
    t2v = record_t2v(pipe, clips, steps, seed=0)

    for gamma, result in results.items():
        label = f"gamma_{gamma:g}"
        save_video(_tile(result["videos"]), out / f"{label}.mp4", fps=4)
        result["record"].save(out / f"{label}.npz")
    t2v.save(out / "t2v.npz")
    viz.contact_sheet({f"γ={g:g}": r["videos"][0] for g, r in results.items()}, out / "contact_sheet.png", max_frames=9)
    viz.plot_reference_mass({f"γ={g:g}": r["record"].reference_mass(by="step") for g, r in results.items()},
                            out / "reference_mass_by_step.png",
                            title=f"cond branch, generated frames -> frame 0 (DyMoS on the first {STOP:.0%} of steps)")
    vanilla = results[0.0]["record"]
    first = [s for s in vanilla.steps if s < max(1, round(0.1 * steps))]
    viz.plot_frame_map(vanilla.frame_map(branch="cond"), out / "frame_map_i2v.png", title="image-to-video (γ=0), cond")
    viz.plot_frame_map_diff(vanilla.frame_map(steps=first, branch="cond"), t2v.frame_map(steps=first, branch="cond"),
                            out / "i2v_minus_t2v.png", labels=("image-to-video", "text-to-video"),
                            title=f"I2V minus T2V frame map, first {len(first)} steps (cond)")
    viz.plot_frame_map_diff(results[1.0]["record"].frame_map(branch="cond"), vanilla.frame_map(branch="cond"),
                            out / "dymos_minus_vanilla.png", labels=("DyMoS γ=1", "vanilla"))
    rows = summarise(results, clips, steps)
    viz.plot_metrics([r["gamma"] for r in rows],
                     {k: [r[k] for r in rows] for k in ("flow", "frame_diff", "motion_err", "bg_psnr", "ssim_later")},
                     out / "metrics_vs_gamma.png", title="motion and fidelity against gamma (toy model)")
    table = metrics.format_table(rows)
    (out / "summary.txt").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)
    print(f"demo written to {out} in {time.perf_counter() - started:.0f} s")
    return 0
