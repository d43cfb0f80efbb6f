"""``attnsteer study``: every value of one recipe parameter over N seeds, with means and bootstrap intervals.

``--model toy`` measures the toy's per-clip metrics on its evaluation clips (:mod:`attnsteer.toy.study`);
any other model gets the weight-free metrics of :mod:`attnsteer.figures.metrics` on its own image and prompt,
seed ``--seed + i`` for seed index i. The study itself (running, resuming, the report) is
:mod:`attnsteer.sweeps.study`.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..sweeps.study import StudySubject, parameter_checksum
from .arguments import MAX_FRAMES, MAX_SEED, finite_non_negative, image_file, int_at_least, int_in, output_folder

WEIGHT_FREE = {
    "flow": "optical flow, mean px per frame pair (motion)",
    "dynamic_degree": "Dynamic-Degree score: mean of the top 5% flow per frame pair, px (motion)",
    "moves": "1 when the clip moves by VBench's Dynamic-Degree rule (Farneback flow)",
    "frame_diff": "mean squared difference of consecutive frames (motion)",
    "flicker": "1 - mean |frame difference| (1 = still; lower: motion or flicker)",
}
FIDELITY = {
    "psnr_first": "PSNR (dB) of frame 0 to the conditioning image",
    "ssim_first": "SSIM of frame 0 to the conditioning image",
    "psnr_later": "PSNR (dB) of frames 1.. to the conditioning image (fidelity)",
    "ssim_later": "SSIM of frames 1.. to the conditioning image (fidelity, 1 = identical)",
}


class PipelineStudySubject(StudySubject):
    """Any model the CLI loads: its image and prompt, noise seed ``seed + i``, the weight-free metrics."""

    name = "weight-free"
    counts = ("moves",)
    primary = "flow"

    def __init__(self, model: Any, image: Any, prompt: str, seed: int, overrides: dict[str, Any],
                 device: str | None) -> None:
        self.model, self.image, self.prompt, self.seed, self.overrides = model, image, prompt, seed, overrides
        self.device = device
        self.reference = None if image is None else np.asarray(image.convert("RGB"))
        self.columns = {**WEIGHT_FREE, **(FIDELITY if self.reference is not None else {})}

    def settings(self) -> dict[str, Any]:
        pipe = self.model.pipe
        image = None if self.reference is None else hashlib.sha256(self.reference.tobytes()).hexdigest()
        return {"model": self.model.name, "pipeline": type(pipe).__name__,
                "parameters_blake2b": parameter_checksum(pipe), "device": str(getattr(pipe, "device", self.device)),
                "image_sha256": image, "prompt": self.prompt, "seed": self.seed, "call": self.overrides}

    def generate(self, pipe: Any, indices: Sequence[int]) -> list[Any]:
        from ..sweeps.batched import batch_call_kwargs, seeded_generator

        kwargs = self.model._arguments(self.image, self.prompt, self.overrides)
        if len(indices) == 1:
            call = {**kwargs, "generator": seeded_generator(pipe, self.seed + indices[0])}
        else:
            call = batch_call_kwargs(pipe, kwargs, len(indices), self.seed)
            call["generator"] = [seeded_generator(pipe, self.seed + i) for i in indices]
        return [np.asarray(frames, dtype=np.float32) for frames in pipe(**call).frames]

    def measure(self, video: np.ndarray, index: int) -> dict[str, float]:
        from ..figures import metrics

        return metrics.evaluate(video, self.reference)


def parse_params(items: Sequence[str], spec: Any) -> tuple[str, list[Any], dict[str, Any]]:
    """``--param NAME=V1,V2,...`` items: (the swept name, its values, the other parameters' single values).
    The swept parameter is the one that lists several values (the first one given when none does)."""
    if not items:
        raise ConfigError(f"--param: a study sweeps one parameter of {spec.name}; give --param NAME=V1,V2,... "
                          f"(its parameters: {', '.join(p.name for p in spec.parameters) or 'none'})")
    given: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not text.strip():
            raise ConfigError(f"--param expects NAME=V1,V2,... (e.g. --param gamma=-1,0,1), got {item!r}")
        if key in given:
            raise ConfigError(f"--param {key} is given twice; list its values once, comma-separated")
        parts = text.split(",")
        if any(not part.strip() for part in parts):
            raise ConfigError(f"--param {key}={text}: an empty value; expected NAME=V1,V2,... with no empty items")
        try:
            values = [spec.parameter(key).parse(part.strip(), spec.name) for part in parts]
        except ConfigError as exc:
            raise ConfigError(f"--param {item}: {exc}") from None
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--param {item}: a value is repeated; list each value once")
        given[key] = values
    swept = [key for key, values in given.items() if len(values) > 1]
    if len(swept) > 1:
        raise ConfigError(f"--param: a study sweeps one parameter, but {' and '.join(swept)} both list several values")
    name = swept[0] if swept else next(iter(given))
    return name, given[name], {key: values[0] for key, values in given.items() if key != name}


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="toy", help="'toy' (the shipped toy model, its evaluation clips and "
                        "metrics), a built-in tiny model, or a diffusers pipeline directory or hub name")
    parser.add_argument("--recipe", required=True, help="the recipe to study (`attnsteer recipes` lists them)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="the swept parameter and its values; repeat with one value to fix another parameter")
    parser.add_argument("--seeds", type=int_at_least(1, "a positive number of seeds"), default=16,
                        help="clips per value (seed indices 0..N-1)")
    parser.add_argument("--out", required=True, type=output_folder,
                        help="output folder; a study there with the same settings is resumed")
    parser.add_argument("--batch", type=int_at_least(1, "a positive number of seeds per call"), default=None,
                        metavar="N", help="run up to N seeds of a value as the batch rows of one pipeline call "
                        "(refused where the model cannot batch exactly); default: one call per clip")
    parser.add_argument("--restart", action="store_true", help="delete the folder's finished clips and start over")
    parser.add_argument("--image", type=image_file, help="reference image (not with --model toy, whose clips "
                        "bring their own); default: a built-in test image")
    parser.add_argument("--prompt", default="", help="text prompt (not with --model toy)")
    parser.add_argument("--seed", type=int_in(0, MAX_SEED, f"a seed in 0..{MAX_SEED} (2**63 - 1)"), default=0,
                        help="noise seed of seed index 0 (index i uses seed + i)")
    parser.add_argument("--steps", type=int_at_least(1, "a positive integer"),
                        help="denoising steps (model default if omitted; toy: 10, as the demo)")
    parser.add_argument("--frames", type=int_in(1, MAX_FRAMES, f"a number of video frames in 1..{MAX_FRAMES}"),
                        help="video frames (model default if omitted; not with --model toy)")
    parser.add_argument("--guidance", type=finite_non_negative, help="guidance scale (model default if omitted)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (real pipelines)")
    parser.add_argument("--allow-download", action="store_true", help="let --model fetch a hub model")


def effective_command(args: argparse.Namespace) -> str:
    """The command line that reruns (or resumes) this study, defaults written out."""
    words = ["attnsteer", "study", "--model", args.model, "--recipe", args.recipe]
    for item in args.param:
        words += ["--param", item]
    words += ["--seeds", str(args.seeds), "--out", str(args.out), "--seed", str(args.seed)]
    for flag in ("batch", "image", "prompt", "steps", "frames", "guidance", "device"):
        value = getattr(args, flag)
        if value not in (None, ""):
            words += [f"--{flag}", str(value)]
    if args.dtype != "auto":
        words += ["--dtype", args.dtype]
    return shlex.join(words)


def _subject(args: argparse.Namespace, model: Any) -> StudySubject:
    if args.model == "toy":
        from ..toy import evaluate
        from ..toy.model import WEIGHTS
        from ..toy.study import ToyStudySubject

        for flag in ("image", "prompt", "frames"):
            if getattr(args, flag) not in (None, ""):
                raise ConfigError(f"--{flag}: the toy study generates the evaluation clips, each with its own "
                                  "reference frame and prompt, 9 frames; leave --{flag} out".replace("{flag}", flag))
        return ToyStudySubject(model.pipe, steps=args.steps or evaluate.STEPS, seed=args.seed, weights=WEIGHTS,
                               guidance_scale=3.0 if args.guidance is None else args.guidance)
    from ..figures.videoio import load_image

    image = None
    if model.takes_image:
        from ..testing.tiny import test_image

        image = load_image(args.image) if args.image else test_image()
    elif args.image:
        raise ConfigError(f"--image: {args.model} is a text-to-video pipeline; leave --image out")
    overrides = {"num_inference_steps": args.steps, "num_frames": args.frames, "guidance_scale": args.guidance}
    return PipelineStudySubject(model, image, args.prompt, args.seed, overrides, args.device)


def cmd_study(args: argparse.Namespace) -> int:
    """Run or resume the study and write study.json, study.md, the plot and the median clips."""
    from ..figures.metrics import format_table
    from ..figures.study_report import value_label
    from ..sweeps.study import run_study, write_study
    from ..sweeps.torchrun import init_process_group, local_device
    from .arguments import prepare_output_folder, recipes
    from .models import load_model

    spec = recipes().get(args.recipe)
    if spec is None:
        raise ConfigError(f"--recipe {args.recipe!r} is not a recipe; choose one of {', '.join(sorted(recipes()))}")
    param, values, fixed = parse_params(args.param, spec)
    prepare_output_folder("--out", args.out)
    args.device = local_device(args.device)
    distributed = init_process_group(args.device)
    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype, seed=args.seed,
                           allow_download=args.allow_download)
        model.show_progress(False)
        subject = _subject(args, model)
        study = run_study(model.pipe, subject, spec.name, param, values, args.seeds, Path(args.out), fixed=fixed,
                          batch=args.batch, resume=not args.restart)
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    if study is None:
        return 0  # a torchrun rank other than 0: rank 0 writes the report
    paths = write_study(study, subject, Path(args.out), command=effective_command(args))
    rows = [{param: value_label(v), **{m: float(np.mean([c.metrics[m] for c in study.clips[v]]))
                                       for m in subject.columns}} for v in study.values]
    print(format_table(rows))
    print(f"{study.computed} clips generated, {study.seeds * len(study.values) - study.computed} resumed; wrote "
          f"{', '.join(p.name for p in paths)} to {args.out}")
    return 0
