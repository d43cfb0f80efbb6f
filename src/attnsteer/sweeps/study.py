"""Studies: every value of one recipe parameter over N seeds, the metrics of each clip, resumable.

A clip is (value, seed index). Each finished clip is one file, ``OUT/clips/<param>_<value>/seed_<i>.npz``
(its video as uint8, its metrics, the hash of the settings that made it), written when its pipeline call
returns. A rerun with the same settings skips the clips whose files are there; a rerun with other settings
is refused (the settings that differ are named), never mixed. The seeds of one value run as the batch rows
of one pipeline call (``batch``), and the values are shared over processes launched by torchrun. What is
generated and measured comes from a :class:`StudySubject` (the toy: :mod:`attnsteer.toy.study`; any
pipeline: :mod:`attnsteer.cli.study`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from tqdm.auto import tqdm

from ..errors import AttnsteerWarning, ConfigError, SteeringError
from ..figures.videoio import as_frames
from ..language.recipe import get_recipe
from ..session import inspect, steer
from .batched import check_batchable, chunks
from .torchrun import launched_world, sharded

CLIPS = "clips"
SETTINGS = "study_settings.json"
CLIP_FILE = re.compile(r"^seed_\d+\.npz$")


class StudySubject:
    """What a study generates and how each clip is measured. ``columns``: metric -> meaning; ``counts``: the
    0/1 metrics (reported as counts of clips); ``primary``: the metric that picks each value's median clip."""

    name: str = "subject"
    columns: Mapping[str, str] = {}
    counts: tuple[str, ...] = ()
    primary: str = ""

    def settings(self) -> dict[str, Any]:
        """Everything besides the recipe that decides a clip (model identity, steps, prompt...), JSON-able."""
        raise NotImplementedError

    def generate(self, pipe: Any, indices: Sequence[int]) -> list[Any]:
        """One pipeline call: the video of each seed index in ``indices`` (one batch row each)."""
        raise NotImplementedError

    def measure(self, video: np.ndarray, index: int) -> dict[str, float]:
        """The metrics (``columns``) of seed index ``index``'s video (uint8 [T, H, W, 3])."""
        raise NotImplementedError


@attrs.frozen
class StudyClip:
    """One finished clip: its value, seed index, metrics and video (uint8 [T, H, W, 3])."""

    value: Any
    index: int
    metrics: dict[str, float]
    video: np.ndarray = attrs.field(eq=False, repr=False)


@attrs.frozen
class Study:
    """A study's settings and clips (``clips[value]`` ordered by seed index); ``records[value]``: the recording of
    its clips when run with ``record=True``; ``computed``: how many clips this run generated (the rest were read)."""

    settings: dict[str, Any]
    values: tuple[Any, ...]
    seeds: int
    clips: dict[Any, list[StudyClip]]
    records: dict[Any, Any]
    computed: int


def parameter_checksum(pipe: Any) -> str:
    """blake2b of the names, shapes, dtypes and bytes of every parameter and buffer of the pipeline's torch
    modules: the model's identity (same weights, same checksum)."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    modules = getattr(pipe, "components", {}) or {}
    if isinstance(pipe, torch.nn.Module):
        modules = {"module": pipe}
    for name, module in sorted(modules.items()):
        if not isinstance(module, torch.nn.Module):
            continue
        for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
            data = tensor.detach().contiguous().cpu()
            digest.update(f"{name}.{key}:{tuple(data.shape)}:{data.dtype}".encode())
            digest.update(data.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """The versions a study ran with: python, attnsteer, torch, diffusers, numpy."""
    found = {"python": platform.python_version()}
    for package in ("attnsteer", "torch", "diffusers", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted names of the settings that differ between ``old`` and ``new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r:.60} -> {new!r:.60}"]


def clip_path(out: Path, param: str, value: Any, index: int) -> Path:
    """Where the clip of ``value`` and seed index ``index`` is kept."""
    from ..figures import study_report

    label = re.sub(r"[^\w.+-]", "_", study_report.value_label(value))
    return out / CLIPS / f"{param}_{label}" / f"seed_{index:04d}.npz"


def _save_clip(path: Path, clip: StudyClip, digest: str) -> None:
    """Write the clip file whole or not at all (a temporary file renamed), so an interruption leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"settings": digest, "value": clip.value, "index": clip.index, "metrics": clip.metrics})
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.savez_compressed(f, video=clip.video, meta=np.array(meta))
    partial.replace(path)


def _load_clip(path: Path, value: Any, index: int, digest: str) -> StudyClip | None:
    """The clip kept at ``path`` (None when there is none); ConfigError when it was made with other settings."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta, video = json.loads(str(data["meta"])), data["video"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: not a readable study clip ({exc}); delete it to recompute that clip") from None
    if meta.get("settings") != digest or meta.get("value") != value or meta.get("index") != index:
        raise ConfigError(f"{path} was made with other settings than this study's (settings {meta.get('settings')}, "
                          f"this study {digest}); use another --out, or delete the folder's clips to start over")
    return StudyClip(value, index, meta["metrics"], video)


def _check_settings(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """Refuse a resume whose settings differ from the folder's; write the settings otherwise."""
    path = out / SETTINGS
    if resume and path.is_file():
        old = json.loads(path.read_text())
        differ = _differences(old, json.loads(json.dumps(settings, default=str)))
        if differ:
            raise ConfigError(f"{out} holds a study with other settings ({'; '.join(differ)}); resume it with the "
                              "same settings, or choose another --out")
    if launched_world()[0] != 0:  # rank 0 writes; the others wait for it
        _barrier()
        return
    if not resume:
        for old_clip in (out / CLIPS).glob("*/seed_*.npz"):
            if CLIP_FILE.match(old_clip.name):
                old_clip.unlink()
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
    _barrier()


def _barrier() -> None:
    """Wait for every torchrun process (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _steering(pipe: Any, recipe: Any, label: str) -> Iterator[None]:
    """``at.steer(pipe, recipe)``; a recipe that applies to no module of the model is refused, not run as vanilla."""
    with contextlib.ExitStack() as stack:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AttnsteerWarning)
            try:
                stack.enter_context(steer(pipe, recipe))
            except AttnsteerWarning as exc:
                raise SteeringError(f"{label}: {exc}") from None
        yield


def run_study(pipe: Any, subject: StudySubject, recipe: str, param: str, values: Sequence[Any], seeds: int,
              out: Path, *, fixed: Mapping[str, Any] | None = None, batch: int | None = None, resume: bool = True,
              record: bool = False, progress: bool = True) -> Study | None:
    """Run (or resume) the study in ``out``: ``recipe(param=value, **fixed)`` for every value, seed indices
    0..seeds-1, ``batch`` seeds per pipeline call. ``resume=False`` deletes the folder's clips first;
    ``record=True`` (needs ``resume=False``) also records each value's attention. Under torchrun the values
    are shared over the processes; rank 0 returns the study, the others None."""
    from ..figures import study_report

    fixed = dict(fixed or {})
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive int, got {seeds!r}")
    values = tuple(values)
    if not values or len(set(map(repr, values))) != len(values):
        raise ConfigError(f"values must hold at least one value, each once, got {values!r}")
    if record and resume:
        raise ConfigError("record=True needs resume=False: a recording covers only the clips generated in one run")
    if param in fixed:
        raise ConfigError(f"parameter {param!r} is both swept and fixed ({fixed[param]!r}); give it once")
    spec = get_recipe(recipe)
    recipes = {value: spec(**fixed, **{param: value}) for value in values}  # bad values fail before any generation
    if batch is not None:
        check_batchable(pipe, min(batch, seeds))
    settings = {"model": subject.settings(), "metrics": subject.name, "recipe": recipe, "param": param,
                "fixed": fixed}
    digest = _settings_hash(settings)
    out = Path(out)
    _check_settings(out, settings, resume)

    def run(mine: list[Any]) -> dict[Any, tuple[list[StudyClip], Any, int]]:
        done = {v: [_load_clip(clip_path(out, param, v, i), v, i, digest) for i in range(seeds)] for v in mine}
        total = len(mine) * seeds
        finished = sum(c is not None for clips in done.values() for c in clips)
        results = {}
        with tqdm(total=total, initial=finished, desc=f"study {recipe} {param}", unit="clip",
                  disable=not progress) as bar:
            for value in mine:
                pending = [i for i, c in enumerate(done[value]) if c is None]
                label = f"--recipe {recipe} {param}={study_report.value_label(value)}"
                with contextlib.ExitStack() as recording:
                    rec = recording.enter_context(inspect(pipe)) if record else None
                    for part in chunks(pending, batch or 1) if pending else []:
                        with _steering(pipe, recipes[value], label):
                            videos = list(subject.generate(pipe, list(part)))
                        if len(videos) != len(part):
                            raise SteeringError(f"{label}: a call for {len(part)} seeds returned {len(videos)} videos")
                        for i, video in zip(part, videos):
                            frames = as_frames(video, f"the video of {label}, seed index {i}")
                            clip = StudyClip(value, i, subject.measure(frames, i), frames)
                            _save_clip(clip_path(out, param, value, i), clip, digest)
                            done[value][i] = clip
                        bar.update(len(part))
                results[value] = (done[value], rec, len(pending))
        return results

    merged = sharded(run, values)
    if merged is None:
        return None
    return Study(settings=settings, values=values, seeds=seeds,
                 clips={v: merged[v][0] for v in values}, records={v: merged[v][1] for v in values},
                 computed=sum(merged[v][2] for v in values))


REPORT_FILES = ("study.json", "study.md", "study_metrics.png", "study_median_clips.png")


def write_study(study: Study, subject: StudySubject, out: Path, *, command: str | None = None) -> list[Path]:
    """``study.json`` (every clip's metrics, the settings and model identity, the command, versions, the
    summary), ``study.md`` (means and bootstrap intervals), the plot and the median clip of each value."""
    from ..figures import study_report, viz  # matplotlib: imported when a report is written

    out = Path(out)
    param, recipe = study.settings["param"], study.settings["recipe"]
    metrics = list(subject.columns)
    rows = {v: [c.metrics for c in study.clips[v]] for v in study.values}
    summary = study_report.summarise(rows, metrics)
    baseline = study_report.baseline_value(list(study.values))
    paired = study_report.paired_differences(
        {v: {c.index: c.metrics for c in study.clips[v]} for v in study.values}, baseline, metrics
    ) if len(study.values) > 1 else []
    fixed = ", ".join(f"{k}={study_report.value_label(v)}" for k, v in study.settings["fixed"].items())
    steered = f"{recipe}({param}=..." + (f", {fixed}" if fixed else "") + ")"
    report = {
        "command": command, "versions": versions(), **study.settings, "values": list(study.values),
        "seeds": study.seeds, "columns": dict(subject.columns), "counts": list(subject.counts),
        "bootstrap": {"method": "percentile", "resamples": study_report.BOOTSTRAP_RESAMPLES,
                      "seed": study_report.BOOTSTRAP_SEED, "level": study_report.LEVEL},
        "clips": [{"value": c.value, "seed_index": c.index, "file": str(clip_path(out, param, c.value, c.index)
                                                                        .relative_to(out)), "metrics": c.metrics}
                  for v in study.values for c in study.clips[v]],
        "summary": summary,
        "paired": {"baseline": baseline, "rows": paired},
    }
    paths = [out / name for name in REPORT_FILES]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    model = study.settings["model"].get("model", subject.name)
    study_report.plot_study(summary, param, subject.columns, paths[2], counts=subject.counts,
                            title=f"{model}, {steered}: means over {study.seeds} seeds per value, bars "
                                  f"{study_report.LEVEL:.0%} bootstrap intervals",
                            caption="What to look for: " + study_report.LOOK_FOR.format(param=param, n=study.seeds))
    medians = {}
    for value in study.values:
        clips = study.clips[value]
        pick = clips[study_report.median_index([c.metrics[subject.primary] for c in clips])]
        medians[f"{param}={study_report.value_label(value)}\nseed {pick.index}"] = pick.video
    viz.contact_sheet(medians, paths[3], title=f"{model}, {steered}: the clip of median {subject.primary} per value")
    facts = [f"command: `{command}`" if command else "run from Python (attnsteer.sweeps.study.run_study)",
             f"model: `{model}`; identity: `{json.dumps(study.settings['model'], default=str)}`",
             f"recipe: `{steered}` with {param} in {', '.join(map(study_report.value_label, study.values))}",
             f"{study.seeds} seeds per value (seed indices 0..{study.seeds - 1}), {study.seeds * len(study.values)} "
             "clips; every clip's numbers are in `study.json`",
             "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    paths[1].write_text(study_report.markdown_page(
        title=f"Study: {steered} on {model}", facts=facts, summary=summary, param=param, columns=subject.columns,
        counts=subject.counts, plot=paths[2].name, sheet=paths[3].name, primary=subject.primary, paired=paired,
        baseline=baseline))
    return paths
