"""``attnsteer demo``: DyMoS on the shipped toy image-to-video model, end to end.

Runs the toy experiment as a study with fixed settings (:mod:`attnsteer.sweeps.study` on
:mod:`attnsteer.toy.study`: fixed clips and seeds, one batch per gamma in {-1, -0.5, 0, 0.5, 1}, attention
recorded) and writes the study's files (``study.json``, ``study.md``, its plot and median clips) and: a
video per gamma (the clips tiled), the recordings, a contact sheet, frame maps, reference mass against
step, the image-to-video minus text-to-video frame map (the paper's Figure 2 analysis), motion and
identity against gamma, and a summary table with a legend of its columns (also printed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import viz
from ..figures.videoio import save_video
from ..sweeps.sweep import gamma_label
from ..toy import evaluate
from ..toy.threads import one_thread

UPSCALE = 4
DOCS = "docs/toy.md in the attnsteer repository"
FULL = {"clips": 16, "steps": evaluate.STEPS}
QUICK = {"clips": 1, "steps": 6}


def _tile(videos: list[np.ndarray], per_row: int = 4) -> np.ndarray:
    """Clips in rows of ``per_row``, upscaled by nearest neighbour so the 32 x 32 frames can be seen."""
    blank = np.zeros_like(videos[0])
    padded = videos + [blank] * (-len(videos) % per_row)
    rows = [np.concatenate(padded[i : i + per_row], axis=2) for i in range(0, len(padded), per_row)]
    grid = np.concatenate(rows, axis=1)
    return grid.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)


def run_demo(out: Path, quick: bool = False) -> list[dict[str, Any]]:
    """Run the toy experiment (``quick``: 1 clip, 6 steps) as a study with fixed settings and write its files to
    ``out`` (the study's files too); returns the summary rows."""
    from ..sweeps.study import run_study, write_study
    from ..sweeps.sweep import SweepResult
    from ..toy import load_toy_pipeline
    from ..toy.model import WEIGHTS
    from ..toy.study import ToyStudySubject

    settings = QUICK if quick else FULL
    steps = settings["steps"]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with one_thread():
        pipe = load_toy_pipeline()
        subject = ToyStudySubject(pipe, steps=steps, weights=WEIGHTS)
        study = run_study(pipe, subject, "dymos", "gamma", evaluate.GAMMAS, settings["clips"], out,
                          fixed={"stop": evaluate.STOP}, batch=settings["clips"], resume=False, record=True)
        clips = [subject.clip(i) for i in range(settings["clips"])]
        results = {g: SweepResult(g, [c.video for c in study.clips[g]], study.records[g]) for g in study.values}
        t2v = evaluate.record_t2v(pipe, clips, steps)
    generated = time.perf_counter() - started
    for gamma, result in results.items():
        save_video(_tile(result.videos), out / f"{gamma_label(gamma)}.mp4", fps=4)
        result.record.save(out / f"{gamma_label(gamma)}.npz")
    t2v.save(out / "t2v.npz")
    rows = evaluate.summarise(results, clips, steps)
    write_figures(results, t2v, clips, rows, steps, out)
    write_study(study, subject, out, command=f"attnsteer demo{' --quick' if quick else ''} --out {out}")
    table = evaluate.table(rows)
    (out / "summary.txt").write_text(table + "\n")
    seconds = time.perf_counter() - started
    summary = {"clips": [c.prompt for c in clips], "steps": steps, "stop": evaluate.STOP, "seconds": round(seconds, 1),
               "seconds_generating": round(generated, 1), "columns": evaluate.COLUMNS, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    print(f"demo written to {out} in {seconds:.0f} s ({len(clips)} clips, {steps} steps, {len(results)} gammas; "
          "study.md: the same clips with bootstrap intervals)")
    print(f"what these numbers show and do not (identity, fast prompts): {DOCS}")
    return rows


def write_figures(results: dict[float, Any], t2v: Any, clips: list[Any], rows: list[dict[str, Any]], steps: int,
                  out: Path) -> None:
    """The demo's figures; every title states the branch, the steps and the layers it covers."""
    vanilla = results[0.0].record
    layers = f"all {len(vanilla.layers)} layers"
    steered = evaluate.steered_steps(steps)
    first = evaluate.first_steps(steps)
    dymos = f"DyMoS on steps {steered[0]}-{steered[-1]} of {steps} (stop={evaluate.STOP})"
    viz.contact_sheet({f"γ={g:g}": r.videos[0] for g, r in results.items()}, out / "contact_sheet.png",
                      title=f"clip 1, prompt '{clips[0].prompt}': frames by DyMoS gamma ({dymos})")
    viz.plot_reference_mass({f"{g:g}": r.record.reference_mass(by="step", branch="cond") for g, r in results.items()},
                            out / "reference_mass_by_step.png", legend_title="gamma", shade=(steered[0], steered[-1]),
                            title=f"generated frames -> reference frame, cond branch, {layers}; shaded: {dymos}")
    viz.plot_frame_map(vanilla.frame_map(branch="cond"), out / "frame_map_i2v.png",
                       title=f"image-to-video, γ=0: cond branch, all {steps} steps, {layers}")
    viz.plot_frame_map_diff(vanilla.frame_map(steps=first, branch="cond"), t2v.frame_map(steps=first, branch="cond"),
                            out / "i2v_minus_t2v.png",
                            title=f"image-to-video minus text-to-video: cond branch, first {len(first)} of {steps} "
                                  f"steps, {layers}")
    viz.plot_frame_map_diff(results[1.0].record.frame_map(steps=steered, branch="cond"),
                            vanilla.frame_map(steps=steered, branch="cond"), out / "dymos_minus_vanilla.png",
                            title=f"DyMoS γ=1 minus vanilla: cond branch, steered steps {steered[0]}-{steered[-1]} "
                                  f"of {steps}, {layers}")
    panels = {"flow": "optical flow (px per frame pair)", "speed": "tracked sprite speed (px/frame)",
              "dir_ok": "direction right (fraction of clips)", "size": "sprite size / true size",
              "colour_err": "sprite colour error (RGB distance)", "bg_psnr": "background PSNR (dB)"}
    true_speed = float(np.mean([np.hypot(*c.velocity) for c in clips]))
    viz.plot_metrics([r["gamma"] for r in rows], {title: [r[key] for r in rows] for key, title in panels.items()},
                     out / "metrics_vs_gamma.png", targets={panels["speed"]: true_speed, panels["size"]: 1.0,
                                                            panels["colour_err"]: 0.0},
                     title=f"motion (top) and identity (bottom) against DyMoS gamma: means over {len(clips)} clips, "
                           f"{steps} steps")
