"""A gamma sweep: one generation per DyMoS gamma with the same seed, recorded and compared."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import attnsteer as at

from . import metrics, viz
from .videoio import save_video


def gamma_label(gamma: float) -> str:
    """File-name label of a gamma: ``gamma_0.6``, ``gamma_-2``."""
    return f"gamma_{gamma:g}"


def run_sweep(model: Any, image: Any, args: argparse.Namespace, gammas: list[float]) -> list[dict[str, Any]]:
    """Generate, record and measure one video per gamma; write videos, records, figures and a table to ``args.out``."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    videos, curves, rows = {}, {}, []
    reference = np.asarray(image.convert("RGB")) if image is not None else None
    for gamma in tqdm(gammas, desc="gamma sweep", unit="video"):
        label = gamma_label(gamma)
        with at.inspect(model.pipe) as rec, at.steer(model.pipe, at.recipes.dymos(gamma=gamma, stop=args.stop)):
            frames = model(image, args.prompt, seed=args.seed, num_inference_steps=args.steps,
                           num_frames=args.frames, guidance_scale=args.guidance)
        save_video(frames, out / f"{label}.{args.format}", fps=args.fps)
        rec.save(out / f"{label}.npz")
        videos[f"γ={gamma:g}"] = frames
        curves[f"γ={gamma:g}"] = rec.reference_mass(by="step", branch="cond" if "cond" in rec.branches else None)
        rows.append({"gamma": gamma, **metrics.evaluate(frames, reference)})
    viz.plot_reference_mass(curves, out / "reference_mass_by_step.png", title="mass of generated frames on the reference frame")
    viz.contact_sheet(videos, out / "contact_sheet.png")
    table = metrics.format_table(rows)
    (out / "metrics.txt").write_text(table + "\n")
    print(table)
    return rows
