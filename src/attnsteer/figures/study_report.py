"""A study's report: per value, the mean and a percentile-bootstrap interval of each metric, a plot with
error bars, the markdown page (``study.md``) and the median clip per value.

The interval: draw ``BOOTSTRAP_RESAMPLES`` resamples of the clips (with replacement, as many as there are) from
``numpy.random.default_rng(BOOTSTRAP_SEED)``, take each resample's mean, and report the 2.5 and 97.5 percentiles
of those means (``numpy.quantile``, linear interpolation). Fixed seed: the same clips give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import ConfigError
from .viz import TITLE_FONT, save_figure

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
LOOK_FOR = ("a metric changes with {param} where the intervals of neighbouring values do not overlap; "
            "overlapping bars mean that {n} seeds per value cannot tell those values apart")


def bootstrap_interval(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its ``level`` percentile-bootstrap interval (module docstring)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ConfigError(f"values must be a non-empty 1-D sequence of finite numbers, got {values!r:.80}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ConfigError(f"resamples must be a positive int, got {resamples!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, x.size, size=(resamples, x.size))
    offsets = x - x[0]  # exact zeros for a constant metric, so its interval has zero width
    means = x[0] + offsets[picks].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x[0] + offsets.mean()), float(low), float(high)


def summarise_metric(values: Sequence[float]) -> dict[str, float | int]:
    """Mean and interval over the finite values (``n``: how many; a PSNR of identical frames is inf)."""
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0, "of": int(x.size)}
    mean, low, high = bootstrap_interval(finite)
    return {"mean": mean, "low": low, "high": high, "n": int(finite.size), "of": int(x.size)}


def summarise(clips: Mapping[Any, Sequence[Mapping[str, float]]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per value: ``{"value", "clips", "metrics": {metric: summarise_metric(...)}}``."""
    return [{"value": value, "clips": len(rows),
             "metrics": {m: summarise_metric([row[m] for row in rows]) for m in metrics}}
            for value, rows in clips.items()]


def baseline_value(values: Sequence[Any]) -> Any:
    """The value the others are compared with, seed by seed: 0 (the recipe off, for most strengths) where it is
    among them, else the first value."""
    return next((v for v in values if not isinstance(v, bool) and isinstance(v, (int, float)) and v == 0), values[0])


def paired_differences(clips: Mapping[Any, Mapping[int, Mapping[str, float]]], baseline: Any,
                       metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per value other than ``baseline``: each metric's per-seed difference to the baseline's clip of the
    same seed, summarised as its mean and bootstrap interval. Pairing removes what the seeds share (the clip, the
    noise), so it tells apart values whose own intervals overlap."""
    base = clips[baseline]
    rows = []
    for value, by_seed in clips.items():
        if value == baseline:
            continue
        seeds = sorted(set(by_seed) & set(base))
        rows.append({"value": value, "clips": len(seeds), "metrics": {
            m: summarise_metric([by_seed[i][m] - base[i][m] for i in seeds]) for m in metrics}})
    return rows


def median_index(values: Sequence[float]) -> int:
    """Position of the median of ``values`` (the lower median for an even count; NaN sorts last)."""
    order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")
    return int(order[(len(order) - 1) // 2])


def value_label(value: Any) -> str:
    """How a parameter value is written in tables and file names: ``0.6``, ``-2``, ``true``, ``cond``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cell(stats: Mapping[str, float], count_of: int | None, signed: bool = False) -> str:
    if stats["n"] == 0:
        return "n/a"
    scale = count_of if count_of is not None else 1
    mean, low, high = (stats[k] * scale for k in ("mean", "low", "high"))
    number = "{:+.3g}" if signed else "{:.3g}"
    mean, low, high = (number.format(x) for x in (mean, low, high))
    if count_of is not None:
        text = f"{mean} / {count_of} [{low}, {high}]"
    else:
        text = f"{mean} [{low}, {high}]"
    return text + (f" (n={stats['n']} of {stats['of']})" if stats["n"] < stats["of"] else "")


def markdown_table(summary: Sequence[Mapping[str, Any]], param: str, metrics: Sequence[str],
                   counts: Sequence[str] = (), signed: bool = False) -> str:
    """Rows = values, columns = metrics, cells ``mean [low, high]`` (counts as ``k / N [low, high]``; ``signed``:
    differences, written with their sign)."""
    lines = [f"| {param} | clips | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for row in summary:
        cells = [_cell(row["metrics"][m], row["clips"] if m in counts else None, signed) for m in metrics]
        lines.append(f"| {value_label(row['value'])} | {row['clips']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _positions(values: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """x positions: the values themselves when all are numbers, else 0, 1, 2, ... in order."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = np.asarray(values, dtype=np.float64) if numeric else np.arange(len(values), dtype=np.float64)
    return x, [value_label(v) for v in values]


def plot_study(summary: Sequence[Mapping[str, Any]], param: str, columns: Mapping[str, str],
               path: str | Path | None = None, *, counts: Sequence[str] = (), title: str | None = None,
               caption: str | None = None, ncols: int = 3) -> Figure:
    """One panel per metric: its mean against the value with the bootstrap interval as error bars; 0/1 metrics
    (``counts``) as the number of clips, on integer ticks; ``caption`` under the panels."""
    if not summary:
        raise ConfigError("summary must hold at least one value's row")
    x, labels = _positions([row["value"] for row in summary])
    ncols = min(ncols, len(columns))
    nrows = -(-len(columns) // ncols)
    fig = Figure(figsize=(3.8 * ncols, 3.0 * nrows + 0.6 * bool(title)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (metric, meaning) in zip(axes, columns.items()):
        scale = np.array([row["clips"] if metric in counts else 1 for row in summary], dtype=np.float64)
        stats = [row["metrics"][metric] for row in summary]
        mean, low, high = (np.array([s[k] for s in stats]) * scale for k in ("mean", "low", "high"))
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=4)
        ax.set_xlabel(param)
        if len(x) <= 12:
            ax.set_xticks(x, labels)
        if metric in counts:  # the whole range 0..N, integer ticks
            ax.set_ylim(-0.05 * scale.max() - 0.1, 1.05 * scale.max() + 0.1)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(f"clips (of {int(scale.max())})")
        ax.set_title(f"{metric}: {meaning}", fontsize=8, wrap=True)
        ax.grid(alpha=0.3)
    for ax in axes[len(columns):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=TITLE_FONT, wrap=True)
    if caption:
        fig.supxlabel(caption, fontsize=8, wrap=True)
    return save_figure(fig, path)


def markdown_page(*, title: str, facts: Sequence[str], summary: Sequence[Mapping[str, Any]], param: str,
                  columns: Mapping[str, str], counts: Sequence[str], plot: str, sheet: str, primary: str,
                  paired: Sequence[Mapping[str, Any]] = (), baseline: Any = None) -> str:
    """``study.md``: what ran, the table of means and intervals, the paired differences to the baseline value,
    the legend, the plot and the median clips."""
    seeds = max(row["clips"] for row in summary)
    legend = "\n".join(f"- `{m}`: {meaning}" + (" (shown as a count of clips)" if m in counts else "")
                       for m, meaning in columns.items())
    return "\n".join([
        f"# {title}", "", *[f"- {fact}" for fact in facts], "",
        f"## Means and {LEVEL:.0%} bootstrap intervals", "",
        f"Per value, the mean over its clips and, in brackets, a {LEVEL:.0%} percentile-bootstrap interval of the "
        f"mean ({BOOTSTRAP_RESAMPLES} resamples of the clips, numpy seed {BOOTSTRAP_SEED}). Where a metric is "
        "not finite for some clips (the PSNR of identical frames), `n` says over how many it is taken.", "",
        markdown_table(summary, param, list(columns), counts), "",
        *([f"## Change against {param} = {value_label(baseline)}, paired by seed", "",
           f"Per value, the mean over seeds of (the value's clip minus the {param} = {value_label(baseline)} clip of "
           "the same seed) and its bootstrap interval, resampling seeds as above. The clips of one seed share "
           f"their reference frame, prompt and noise, so a difference whose interval excludes 0 is a change that "
           f"{seeds} seeds support, even where the intervals of the means above overlap.", "",
           markdown_table(paired, param, list(columns), counts, signed=True), ""] if paired else []),
        legend, "",
        f"![metrics against {param}]({plot})", "",
        f"What to look for: {LOOK_FOR.format(param=param, n=seeds)}.", "",
        f"![median clip per value]({sheet})", "",
        f"The median clip per value: of each value's clips, the one whose `{primary}` is the median (the lower "
        "median for an even count), so the row shows a typical clip, not the best one.", "",
    ])
