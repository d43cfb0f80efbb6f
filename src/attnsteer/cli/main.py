"""The ``attnsteer`` command: run, inspect, sweep, study, recipes, models, demo."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AttnsteerError, AttnsteerWarning, ConfigError, SteeringError
from .arguments import (
    DefaultsHelp,
    add_model_arguments,
    add_recipe_arguments,
    floats,
    fraction,
    int_at_least,
    output_folder,
    prepare_output_folder,
    recipe_arguments,
    recipe_from_args,
    recipes,
)
from .heatmaps import add_heatmap_arguments, inspect_options, write_heatmap_figures
from .study import add_study_arguments, cmd_study


def _load(args: argparse.Namespace):
    from .models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype, seed=args.seed,
                       allow_download=args.allow_download)
    model.show_progress(True)
    return model


def _image(args: argparse.Namespace, model: Any):
    """The conditioning image: ``--image``, else a built-in test image; None for text-to-video pipelines."""
    from ..figures.videoio import load_image

    if not model.takes_image:
        if args.image:
            raise ConfigError(f"--image: {args.model} is a text-to-video pipeline ({type(model.pipe).__name__} "
                              "takes no image); leave --image out")
        return None
    if args.image:
        return load_image(args.image)
    from ..testing.tiny import test_image

    return test_image()


def _generate(model, image, args: argparse.Namespace):
    return model(image, args.prompt, seed=args.seed, num_inference_steps=args.steps, num_frames=args.frames,
                 guidance_scale=args.guidance)


def _enter_steering(stack: contextlib.ExitStack, model: Any, recipe: Any, prompt: str | None) -> Any:
    """``at.steer(pipe, recipe)`` entered on ``stack`` (no recipe: vanilla), given the prompt and tokenizer for
    rules on prompt words; a recipe that can apply to no module of the model (its layers match none) is refused
    before anything is generated, not run as vanilla."""
    import attnsteer as at

    session = at.steer(model.pipe, *(() if recipe is None else (recipe,)), prompt=model.prompt(prompt),
                       tokenizer=model.tokenizer())
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttnsteerWarning)
        try:
            return stack.enter_context(session)
        except AttnsteerWarning as exc:
            raise SteeringError(f"--recipe {recipe!r}: {exc}") from None


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def cmd_recipes(args: argparse.Namespace) -> int:
    """Every recipe, built-in and third-party: signature, source, description, parameters."""
    for spec in recipes().values():
        print(f"{spec.name}({spec.signature_text()})  [{spec.source}]")
        print(f"    {spec.description}")
        for p in spec.parameters:
            choices = f" (one of {', '.join(map(str, p.choices))})" if p.choices else ""
            print(f"    --param {p.name}=<{p.type_name}>  {p.help}{choices}".rstrip())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The family table, read from the adapters (``--markdown``: the table of docs/models.md)."""
    from ..plugins.table import family_rows, markdown_table, text_table

    rows = family_rows()
    print(markdown_table(rows) if args.markdown else text_table(rows))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..figures.videoio import save_video

    recipe = recipe_from_args(args)
    prepare_output_folder("--out", args.out)
    model = _load(args)
    if recipe is not None:  # a tiny model's negative prompt: its stand-in embeddings (it has no text encoder)
        spec = recipes()[args.recipe]
        recipe = recipe_from_args(args, **model.stand_in_text(spec, recipe_arguments(args, spec)))
    image = _image(args, model)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        steering = _enter_steering(stack, model, recipe, args.prompt)
        frames = _generate(model, image, args)
    elapsed = time.perf_counter() - started
    video_path = save_video(frames, args.out / f"video.{args.format}", fps=args.fps)
    record = {
        "model": args.model,
        "recipe": None if recipe is None else repr(recipe),
        "prompt": args.prompt,
        "seed": args.seed,
        "video": video_path.name,
        "frames": int(frames.shape[0]),
        "seconds": round(elapsed, 3),
        "applied": steering.summary(),
    }
    _write_json(args.out / "run.json", record)
    print(f"wrote {video_path} and {args.out / 'run.json'} ({elapsed:.1f} s)")
    return 0


def _record_run(model, image, args, recipe):
    """Generate once under at.inspect (and the recipe, if any): (frames, record, steering summary)."""
    import attnsteer as at

    options = inspect_options(args, model)
    with contextlib.ExitStack() as stack:
        rec = stack.enter_context(at.inspect(model.pipe, **options))
        steering = _enter_steering(stack, model, recipe, args.prompt)
        frames = _generate(model, image, args)
    rec.metadata["rules"] = steering.summary()
    return frames, rec


def write_record_figures(rec, out: Path, label: str = "", run_name: str = "vanilla") -> list[Path]:
    """The standard figures of one recording: frame map, maps by step, reference mass by step and by layer;
    titles name the branch, steps and layers each covers, legends the run (``run_name``)."""
    from ..figures import viz
    from ..sweeps.sweep import branch_of

    ref = rec.layout.reference_frames
    prefix = f"{label}_" if label else ""
    branch = branch_of(rec)
    scope = f"{branch or 'all'} branch"
    steps, layers = f"{len(rec.steps)} steps", f"{len(rec.layers)} layers"
    paths = [out / f"{prefix}frame_map.png", out / f"{prefix}frame_maps_by_step.png",
             out / f"{prefix}reference_mass_by_step.png", out / f"{prefix}reference_mass_by_layer.png"]
    viz.plot_frame_map(rec.frame_map(branch=branch), paths[0], reference_frames=ref,
                       title=f"{run_name}: {scope}, all {steps}, all {layers}")
    viz.plot_frame_map_grid({f"step {s}": rec.frame_map(steps=[s], branch=branch) for s in rec.steps}, paths[1],
                            reference_frames=ref, title=f"{run_name}, frame maps by step: {scope}, all {layers}")
    viz.plot_reference_mass({run_name: rec.reference_mass(by="step", branch=branch)}, paths[2],
                            title=f"generated frames -> reference: {scope}, all {layers}")
    viz.plot_reference_mass({run_name: rec.reference_mass(by="layer", branch=branch)}, paths[3],
                            xlabel="self-attention layer (index)", title=f"generated frames -> reference: {scope}, "
                                                                          f"all {steps}")
    return paths


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..figures import viz
    from ..figures.videoio import save_video
    from ..sweeps.sweep import branch_of

    recipe = recipe_from_args(args)
    prepare_output_folder("--out", args.out)
    model = _load(args)
    image = _image(args, model)
    frames, rec = _record_run(model, image, args, recipe)
    name = "vanilla" if recipe is None else repr(recipe)
    written = [rec.save(args.out / "record.npz"),
               save_video(frames, args.out / f"video.{args.format}", fps=args.fps),
               *write_record_figures(rec, args.out, run_name=name),
               *write_heatmap_figures(rec, frames, args.out, args.format, args.fps)]
    if recipe is not None:
        _, vanilla = _record_run(model, image, args, None)
        vanilla.save(args.out / "vanilla_record.npz")
        branch = branch_of(rec)
        viz.plot_frame_map_diff(rec.frame_map(branch=branch), vanilla.frame_map(branch=branch),
                                args.out / "diff_vs_vanilla.png",
                                title=f"{name} minus vanilla: {branch or 'all'} branch, all {len(rec.steps)} steps, "
                                      f"all {len(rec.layers)} layers")
        written += [args.out / "vanilla_record.npz", args.out / "diff_vs_vanilla.png"]
    print(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import numpy as np

    from ..sweeps.sweep import steer_sweep, write_sweep
    from ..sweeps.torchrun import init_process_group, local_device, sharded

    prepare_output_folder("--out", args.out)
    args.device = local_device(args.device)
    distributed = init_process_group(args.device)
    try:
        model = _load(args)
        model.show_progress(False)
        image = _image(args, model)
        results = sharded(lambda gammas: steer_sweep(
            model.pipe, lambda: [_generate(model, image, args)], gammas, stop=args.stop, batch=args.batch,
            generate_batch=lambda n: model.batch(image, args.prompt, n, seed=args.seed, num_inference_steps=args.steps,
                                                 num_frames=args.frames, guidance_scale=args.guidance),
        ), args.gamma)
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    if results is None:
        return 0  # a torchrun rank other than 0: rank 0 gathered its results and writes the report
    reference = np.asarray(image.convert("RGB")) if image is not None else None
    rows = write_sweep(results, args.out, reference=reference, video_format=args.format, fps=args.fps,
                       stop=args.stop, model=args.model)
    from ..figures.metrics import format_table

    print(format_table(rows))
    print(f"wrote a video and a recording per gamma, reference_mass_by_step.png, contact_sheet.png and "
          f"metrics.txt to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(prepare_output_folder("--out", args.out), quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnsteer", description=__doc__,
                                     formatter_class=DefaultsHelp)
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, formatter_class=DefaultsHelp)

    p = add("run", help="generate one video with a recipe applied; writes the video and run.json")
    add_model_arguments(p)
    add_recipe_arguments(p)
    p.set_defaults(func=cmd_run)

    p = add("inspect", help="record frame-level attention (and spatial heatmaps); writes record.npz and figures")
    add_model_arguments(p)
    add_recipe_arguments(p)
    add_heatmap_arguments(p)
    p.set_defaults(func=cmd_inspect)

    p = add("sweep", help="one generation per gamma with the same seed; videos, curves, contact sheet",
            description="One generation per gamma with the same seed. Under torchrun (python -m "
                        "torch.distributed.run --nproc_per_node N -m attnsteer.cli sweep ...) the gammas are "
                        "shared round-robin over the N processes (gloo on the CPU, nccl with --device cuda: one "
                        "GPU per process) and rank 0 writes the one report.")
    add_model_arguments(p)
    p.add_argument("--gamma", type=floats, default=[-2.0, -1.0, 0.0, 0.6, 1.0], help="comma-separated gammas")
    p.add_argument("--stop", type=fraction, default=0.2, help="fraction of the steps DyMoS modulates, in (0, 1]")
    p.add_argument("--batch", type=int_at_least(1, "a positive number of gammas per call"), default=None,
                   metavar="N", help="run up to N gammas as the batch rows of one pipeline call (same outputs as one "
                   "call per gamma; refused where the model cannot batch exactly); default: one call per gamma")
    p.set_defaults(func=cmd_sweep)

    p = add("study", help="a recipe parameter's values over N seeds: per-clip metrics, means with bootstrap "
            "intervals, resumable; writes study.json and study.md",
            description="Every value of one recipe parameter over N seeds, one file per finished clip under --out "
                        "(a rerun with the same settings resumes; other settings are refused). Under torchrun the "
                        "values are shared over the processes and rank 0 writes the report.")
    add_study_arguments(p)
    p.set_defaults(func=cmd_study)

    p = add("recipes", help="list recipes (built-in and third-party) and their parameters")
    p.set_defaults(func=cmd_recipes)

    p = add("models", help="list the supported model families: modules, layout, reference frames, branches, tests")
    p.add_argument("--markdown", action="store_true", help="print the markdown table of docs/models.md")
    p.set_defaults(func=cmd_models)

    p = add("demo", help="DyMoS on the shipped toy model: videos, maps, motion against gamma")
    p.add_argument("--out", type=output_folder, default=Path("attnsteer-demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="1 clip and 6 steps instead of 8 and 20 (a smoke test)")
    p.set_defaults(func=cmd_demo)
    return parser


NEGATIVE_VALUE = re.compile(r"^-[\d.]")  # "-2", "-2,-1,0", "-1e-3", "-.5", also mistyped "-1,x"


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--gamma -2,-1,0`` as ``--gamma=-2,-1,0``: argparse reads a value that starts with '-' and is
    not a single number as an option, so documented commands with negative lists would fail (and a
    mistyped list would get "expected one argument" instead of the value's own error)."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and NEGATIVE_VALUE.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = join_negative_values(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]
    try:  # building the parser loads third-party recipes: its failures get the same one-line handling
        args = build_parser().parse_args(argv)
        return args.func(args)
    except AttnsteerError as exc:
        if debug:
            raise
        print(f"attnsteer: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`attnsteer recipes | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush cannot fail again
        return 1  # as Python's own docs advise for SIGPIPE
    except Exception as exc:  # an unexpected failure: one line, the traceback with --debug
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"attnsteer: unexpected error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
