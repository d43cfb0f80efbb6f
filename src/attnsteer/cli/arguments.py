"""The command line's argument types and the flags shared by its commands: model, recipe and its parameters,
output folders, numbers. Each type raises argparse's error naming the flag and the allowed values."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def recipes() -> dict[str, Any]:
    """Every registered recipe by name, built-in and third-party."""
    from ..language.recipe import available_recipes

    return available_recipes()


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it has one (not None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def shortcut_parameters() -> dict[str, Any]:
    """The built-in recipes' parameters by name; each has its own option (``--gamma``), shared by the
    recipes that have it. Every recipe's parameters, third-party ones too, are given as ``--param``."""
    params: dict[str, Any] = {}
    for spec in recipes().values():
        if spec.source == "built-in":
            for p in spec.parameters:
                params.setdefault(p.name, p)
    return params


def int_at_least(minimum: int, wording: str):
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


def int_in(minimum: int, maximum: int, wording: str):
    """An argparse type: an integer in ``[minimum, maximum]``, refused as ``expected {wording}``."""
    at_least = int_at_least(minimum, wording)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {value}")
        return value

    return parse


MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
MAX_FRAMES = 1024  # video frames: far above what the supported families generate (Wan 81, LTX 257)
_positive_int = int_at_least(1, "a positive integer")
_non_negative_int = int_at_least(0, "an integer >= 0")


def finite_non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def output_folder(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} lies under {str(parent)!r}, which is a file, not a folder")
    return path


def image_file(text: str) -> Path:
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


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str = "tiny-wan") -> None:
    from ..testing.tiny import TINY_MODELS

    parser.add_argument("--model", default=default_model,
                        help="a diffusers pipeline directory or cached hub name, 'toy', or a built-in tiny model: "
                             + ", ".join(sorted(TINY_MODELS)))
    parser.add_argument("--image", type=image_file, help="reference image (PNG/JPEG); default: a built-in test image")
    parser.add_argument("--prompt", default="", help="text prompt")
    parser.add_argument("--out", required=True, type=output_folder, help="output folder")
    parser.add_argument("--seed", type=int_in(0, MAX_SEED, f"a seed in 0..{MAX_SEED} (2**63 - 1)"), default=0,
                        help="random seed")
    parser.add_argument("--steps", type=_positive_int, help="number of denoising steps (model default if omitted)")
    parser.add_argument("--frames", type=int_in(1, MAX_FRAMES, f"a number of video frames in 1..{MAX_FRAMES}"),
                        help="number of video frames (model default if omitted)")
    parser.add_argument("--guidance", type=finite_non_negative, help="guidance scale (model default if omitted)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (real pipelines)")
    parser.add_argument("--format", default="mp4", choices=["mp4", "gif"], help="video file format")
    parser.add_argument("--fps", type=_positive_int, default=8, help="frames per second of the written video")
    parser.add_argument("--allow-download", action="store_true",
                        help="let --model fetch a hub model that is not in the local cache (off: fail at once)")


def add_recipe_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--recipe", required=required, help="recipe to apply (`attnsteer recipes` lists them): "
                        + ", ".join(sorted(recipes())))
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the recipe, repeatable (any recipe, third-party ones too)")
    group = parser.add_argument_group("recipe parameters", "options for the built-in recipes' parameters, with the recipes "
                                      "that take them (--param KEY=VALUE works for every recipe)")
    for name, p in shortcut_parameters().items():
        flag = "--" + name.replace("_", "-")
        users = ", ".join(spec.name for spec in recipes().values()
                          if spec.source == "built-in" and any(q.name == name for q in spec.parameters))
        if p.kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=users)
        else:
            default = "required" if p.required else f"default {p.default!r}"
            group.add_argument(flag, type=p.kind, default=None, help=f"{users} ({default})")


def recipe_arguments(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """The chosen recipe's arguments: its ``--name`` options, then ``--param KEY=VALUE`` parsed by the parameter's type."""
    given = {name: getattr(args, name) for name in shortcut_parameters() if getattr(args, name, None) is not None}
    for name in given:
        spec.parameter(name)  # an option of another recipe raises, naming this recipe's parameters
    for item in args.param:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        if key in given:
            raise ConfigError(f"recipe parameter {key!r} is given twice")
        given[key] = spec.parameter(key).parse(text, spec.name)
    return given


def recipe_from_args(args: argparse.Namespace, **fixed: Any) -> Any:
    if not args.recipe:
        given = ["--" + n.replace("_", "-") for n in shortcut_parameters() if getattr(args, n, None) is not None]
        given += [f"--param {item}" for item in args.param]
        if given:
            raise ConfigError(f"{', '.join(given)} set a recipe parameter but no --recipe was given (choose one of "
                              f"{', '.join(sorted(recipes()))})")
        return None
    spec = recipes().get(args.recipe)
    if spec is None:
        import difflib

        close = difflib.get_close_matches(args.recipe, list(recipes()), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"--recipe {args.recipe!r} is not a recipe; {hint}`attnsteer recipes` lists them")
    kwargs = recipe_arguments(args, spec)
    try:
        return spec(**{**kwargs, **fixed})
    except ConfigError as exc:  # name the flags that made the recipe, not only its internal field
        flags = " ".join(f"--{n.replace('_', '-')} {v}" if getattr(args, n, None) is not None else f"--param {n}={v}"
                         for n, v in kwargs.items())
        raise ConfigError(f"--recipe {args.recipe} {flags}: {exc}".replace("  ", " ")) from exc


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def floats(text: str) -> list[float]:
    """An argparse type: comma-separated finite numbers, at least one, each once (a repeat would overwrite
    the outputs of its first run)."""
    try:
        values = [finite(x) for x in text.split(",") if x.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers like -2,-1,0,0.6,1; got {text!r}")
    repeated = sorted({v for i, v in enumerate(values) if v in values[:i]})
    if repeated:
        raise argparse.ArgumentTypeError(f"expected distinct values, got {text!r} (repeated: "
                                         f"{', '.join(map(str, repeated))}); each value's outputs share one name")
    return values


def prepare_output_folder(flag: str, path: Path) -> Path:
    """Create ``path`` and check it takes files, before any generation runs: ConfigError naming ``flag``."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {str(path)!r}: cannot write there ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None
    return path


def fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction of the steps in (0, 1], got {text!r}")
    return value
