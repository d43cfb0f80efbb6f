"""A gamma sweep: the same generation once per DyMoS gamma, recorded, for ``attnsteer sweep`` and the demo.

:func:`steer_sweep` is the one runner both use; :func:`write_sweep` writes what ``attnsteer sweep``
promises (a video and a recording per gamma, reference-mass curves, a contact sheet, a metrics table).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from tqdm.auto import tqdm


from ..errors import ConfigError
from ..figures import metrics, viz
from ..figures.videoio import save_video
from ..language.recipe import get_recipe
from ..session import inspect, steer


@attrs.frozen
class SweepResult:
    """What one gamma produced: the videos of one ``generate()`` call and their recording (all pooled)."""

    gamma: float
    videos: list[np.ndarray]
    record: Any  # at.Record


def gamma_label(gamma: float) -> str:
    """File-name label of a gamma: ``gamma_0.6``, ``gamma_-2``."""
    return f"gamma_{gamma:g}"


def steer_sweep(
    pipe: Any, generate: Callable[[], Sequence[np.ndarray]], gammas: Sequence[float], *, stop: float,
    desc: str = "gamma sweep", batch: int | None = None, generate_batch: Callable[[int], Sequence[Any]] | None = None,
) -> dict[float, SweepResult]:
    """Run ``generate()`` (which calls ``pipe`` and returns its videos) once per gamma under
    ``at.recipes.dymos(gamma, stop)`` and ``at.inspect``; the same seeds inside ``generate`` make the
    gammas comparable. ``batch=N`` runs up to N gammas as the rows of one call of ``generate_batch(n)``
    (which returns the n items' videos; see :mod:`attnsteer.sweeps.batched`), with the same results."""
    if not gammas:
        raise ConfigError("gammas must hold at least one value")
    if batch is not None:
        return _batched_sweep(pipe, generate_batch, gammas, stop=stop, batch=batch)
    results = {}
    for gamma in tqdm(gammas, desc=desc, unit="gamma"):
        with inspect(pipe) as rec, steer(pipe, get_recipe("dymos")(gamma=gamma, stop=stop)):
            videos = list(generate())
        results[gamma] = SweepResult(gamma, videos, rec)
    return results


def _batched_sweep(
    pipe: Any, generate_batch: Callable[[int], Sequence[Any]] | None, gammas: Sequence[float], *, stop: float, batch: int,
) -> dict[float, SweepResult]:
    from .batched import run_batched

    if generate_batch is None:
        raise ConfigError("steer_sweep(batch=...) needs generate_batch(n), which calls the pipeline for n items")
    gammas = list(dict.fromkeys(gammas))  # one row per distinct gamma, as the sequential sweep keys them
    dymos = get_recipe("dymos")
    runs = run_batched(pipe, [dymos(gamma=g, stop=stop) for g in gammas], generate_batch, chunk=batch)
    return {g: SweepResult(g, [video], rec) for g, (video, rec) in zip(gammas, runs)}


def branch_of(record: Any) -> str | None:
    """The branch figures show: the conditional one where the model has it, else all calls."""
    return "cond" if "cond" in record.branches else None


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference of two videos, on a 0..1 scale."""
    from ..figures.videoio import as_frames

    return float(np.abs(as_frames(a).astype(np.float32) - as_frames(b).astype(np.float32)).mean() / 255)


def write_sweep(
    results: dict[float, SweepResult], out: Path, *, reference: Any = None, video_format: str = "mp4",
    fps: int = 8, stop: float = 0.2, model: str = "",
) -> list[dict[str, Any]]:
    """``out``/gamma_G.{mp4,gif} and gamma_G.npz per gamma, reference_mass_by_step.png,
    contact_sheet.png and metrics.txt (fidelity against ``reference``, an image, when given);
    returns the metric rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for gamma, result in results.items():
        (video,) = result.videos
        save_video(video, out / f"{gamma_label(gamma)}.{video_format}", fps=fps)
        result.record.save(out / f"{gamma_label(gamma)}.npz")
        rows.append({"gamma": gamma, **metrics.evaluate(video, reference)})
    base = results.get(0.0, next(iter(results.values())))
    branch, steps = branch_of(base.record), len(base.record.steps)
    steered = [s for s in range(steps) if s / steps < stop]
    curves = {f"{g:g}": r.record.reference_mass(by="step", branch=branch) for g, r in results.items()}
    viz.plot_reference_mass(curves, out / "reference_mass_by_step.png", legend_title="DyMoS gamma",
                            shade=(steered[0], steered[-1]) if steered else None,
                            title=f"{model}: generated frames -> reference frame, {branch or 'all'} branch, all "
                                  f"{len(base.record.layers)} layers; shaded: DyMoS steps (first {stop:.0%} of "
                                  f"{steps})".strip())
    viz.contact_sheet({f"γ={g:g}\n|Δ| {_difference(r.videos[0], base.videos[0]):.2g}": r.videos[0]
                       for g, r in results.items()}, out / "contact_sheet.png",
                      title=f"{model} videos by DyMoS gamma, same seed; |Δ|: mean absolute pixel difference "
                            f"(0-1) to γ={base.gamma:g}".strip())
    table = metrics.format_table(rows)
    (out / "metrics.txt").write_text(table + "\n")
    return rows
