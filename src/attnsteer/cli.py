"""The ``attnsteer`` command: run, inspect, sweep, recipes, demo."""

from __future__ import annotations

import argparse
import functools
import inspect as pyinspect
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import AttnsteerError, ConfigError

RECIPE_PARAM_TYPES = {bool: "flag", int: int, float: float, str: str}


def _recipes() -> dict[str, Any]:
    from .recipes import RECIPES

    return RECIPES


def _recipe_parameters() -> dict[str, pyinspect.Parameter]:
    """Every parameter of every recipe, by name (recipes sharing a name share the option)."""
    params: dict[str, pyinspect.Parameter] = {}
    for fn in _recipes().values():
        for p in pyinspect.signature(fn).parameters.values():
            params.setdefault(p.name, p)
    return params


def _int_at_least(minimum: int, wording: str):
    """An argparse type: an integer >= ``minimum``, refused as ``expected {wording}``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _finite_non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _output_folder(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return path


def _image_file(text: str) -> Path:
    """An argparse type: a file that Pillow can read as an image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image Pillow can read (PNG, JPEG, ...): {exc}") from None
    return path


def _add_model_arguments(parser: argparse.ArgumentParser, default_model: str = "tiny-wan") -> None:
    from .tiny import TINY_MODELS

    parser.add_argument("--model", default=default_model,
                        help="a diffusers pipeline directory or cached hub name, 'toy', or a built-in tiny model: "
                             + ", ".join(sorted(TINY_MODELS)))
    parser.add_argument("--image", type=_image_file, help="reference image (PNG/JPEG); default: a built-in test image")
    parser.add_argument("--prompt", default="", help="text prompt")
    parser.add_argument("--out", required=True, type=_output_folder, help="output folder")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="random seed")
    parser.add_argument("--steps", type=_positive_int, help="number of denoising steps (model default if omitted)")
    parser.add_argument("--frames", type=_positive_int, help="number of video frames (model default if omitted)")
    parser.add_argument("--guidance", type=_finite_non_negative, help="guidance scale (model default if omitted)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (real pipelines)")
    parser.add_argument("--format", default="mp4", choices=["mp4", "gif"], help="video file format")
    parser.add_argument("--fps", type=_positive_int, default=8, help="frames per second of the written video")
    parser.add_argument("--allow-download", action="store_true",
                        help="let --model fetch a hub model that is not in the local cache (off: fail at once)")


def _add_recipe_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--recipe", choices=sorted(_recipes()), required=required, help="recipe to apply")
    for name, p in _recipe_parameters().items():
        kind = _parameter_kind(p)
        flag = "--" + name.replace("_", "-")
        if kind == "flag":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"recipe parameter {name}")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"recipe parameter {name} (recipe default: {p.default!r})")


def _parameter_kind(p: pyinspect.Parameter) -> Any:
    """The argparse type of a recipe parameter: from its default, else from its annotation (``int | None``)."""
    if p.default is not None and type(p.default) in RECIPE_PARAM_TYPES:
        return RECIPE_PARAM_TYPES[type(p.default)]
    annotation = str(p.annotation)
    for typ, kind in RECIPE_PARAM_TYPES.items():
        if typ.__name__ in annotation:
            return kind
    return str


def _recipe_from_args(args: argparse.Namespace, **fixed: Any) -> Any:
    if not args.recipe:
        given = [name for name in _recipe_parameters() if getattr(args, name, None) is not None]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise ConfigError(f"{flags} set a recipe parameter but no --recipe was given (choose one of "
                              f"{', '.join(sorted(_recipes()))})")
        return None
    fn = _recipes()[args.recipe]
    names = pyinspect.signature(fn).parameters
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    kwargs.update(fixed)
    try:
        return fn(**kwargs)
    except ConfigError as exc:  # name the flags that made the recipe, not only its internal field
        flags = " ".join(f"--{n.replace('_', '-')} {v}" for n, v in kwargs.items() if n not in fixed)
        raise ConfigError(f"--recipe {args.recipe} {flags}: {exc}".replace("  ", " ")) from exc


def _load(args: argparse.Namespace):
    from .models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype, seed=args.seed,
                       allow_download=args.allow_download)
    model.show_progress(True)
    return model


def _image(args: argparse.Namespace):
    from .videoio import load_image

    if args.image:
        return load_image(args.image)
    from .tiny import test_image

    return test_image()


def _generate(model, image, args: argparse.Namespace):
    return model(image, args.prompt, seed=args.seed, num_inference_steps=args.steps, num_frames=args.frames,
                 guidance_scale=args.guidance)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def cmd_recipes(args: argparse.Namespace) -> int:
    for name, fn in _recipes().items():
        signature = pyinspect.signature(fn)
        print(f"{name}{signature}")
        doc = pyinspect.getdoc(fn) or ""
        for line in doc.splitlines():
            print(f"    {line}")
        if all(p.default is not p.empty for p in signature.parameters.values()):
            print(f"    default rules: {fn()!r} -> {[repr(r) for r in fn().rules]}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import attnsteer as at

    from .videoio import save_video

    recipe = _recipe_from_args(args)
    model = _load(args)
    image = _image(args)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with at.steer(model.pipe, *([recipe] if recipe else [])) as steering:
        frames = _generate(model, image, args)
    elapsed = time.perf_counter() - started
    video_path = save_video(frames, args.out / f"video.{args.format}", fps=args.fps)
    record = {
        "model": args.model,
        "recipe": repr(recipe) if recipe else None,
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

    with at.inspect(model.pipe) as rec, at.steer(model.pipe, *([recipe] if recipe else [])) as steering:
        frames = _generate(model, image, args)
    rec.metadata["rules"] = steering.summary()
    return frames, rec


def write_record_figures(rec, out: Path, label: str = "", run_name: str = "vanilla") -> list[Path]:
    """The standard figures of one recording: frame map, maps by step, reference mass by step and by layer;
    titles name the branch, steps and layers each covers, legends the run (``run_name``)."""
    from . import viz
    from .sweep import branch_of

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
    from . import viz
    from .sweep import branch_of
    from .videoio import save_video

    recipe = _recipe_from_args(args)
    model = _load(args)
    image = _image(args)
    args.out.mkdir(parents=True, exist_ok=True)
    frames, rec = _record_run(model, image, args, recipe)
    name = repr(recipe) if recipe else "vanilla"
    written = [rec.save(args.out / "record.npz"),
               save_video(frames, args.out / f"video.{args.format}", fps=args.fps),
               *write_record_figures(rec, args.out, run_name=name)]
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


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _floats(text: str) -> list[float]:
    """An argparse type: comma-separated finite numbers, at least one."""
    try:
        values = [_finite(x) for x in text.split(",") if x.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers like -2,-1,0,0.6,1; got {text!r}")
    return values


def _fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction of the steps in (0, 1], got {text!r}")
    return value


def cmd_sweep(args: argparse.Namespace) -> int:
    import numpy as np

    from .sweep import steer_sweep, write_sweep

    model = _load(args)
    model.show_progress(False)
    image = _image(args)
    results = steer_sweep(model.pipe, lambda: [_generate(model, image, args)], args.gamma, stop=args.stop)
    reference = np.asarray(image.convert("RGB")) if image is not None else None
    rows = write_sweep(results, args.out, reference=reference, video_format=args.format, fps=args.fps,
                       stop=args.stop, model=args.model)
    from .metrics import format_table

    print(format_table(rows))
    print(f"wrote a video and a recording per gamma, reference_mass_by_step.png, contact_sheet.png and "
          f"metrics.txt to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnsteer", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    p = add("run", help="generate one video with a recipe applied; writes the video and run.json")
    _add_model_arguments(p)
    _add_recipe_arguments(p)
    p.set_defaults(func=cmd_run)

    p = add("inspect", help="record frame-level attention; writes record.npz and figures")
    _add_model_arguments(p)
    _add_recipe_arguments(p)
    p.set_defaults(func=cmd_inspect)

    p = add("sweep", help="one generation per gamma with the same seed; videos, curves, contact sheet")
    _add_model_arguments(p)
    p.add_argument("--gamma", type=_floats, default=[-2.0, -1.0, 0.0, 0.6, 1.0], help="comma-separated gammas")
    p.add_argument("--stop", type=_fraction, default=0.2, help="fraction of the steps DyMoS modulates, in (0, 1]")
    p.set_defaults(func=cmd_sweep)

    p = add("recipes", help="list recipes and their parameters")
    p.set_defaults(func=cmd_recipes)

    p = add("demo", help="DyMoS on the shipped toy model: videos, maps, motion against gamma")
    p.add_argument("--out", type=_output_folder, default=Path("attnsteer-demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="2 clips and 8 steps instead of 8 and 20 (a smoke test)")
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
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except AttnsteerError as exc:
        if args.debug:
            raise
        print(f"attnsteer: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unexpected failure: one line, the traceback with --debug
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"attnsteer: unexpected error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
