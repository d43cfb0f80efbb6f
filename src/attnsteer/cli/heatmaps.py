"""The spatial-heatmap options of ``attnsteer inspect``: which maps to keep, and the figures,
animation and ``maps.npz`` written from them.

    attnsteer inspect --model tiny-cogvideox --prompt "a dog runs" --word dog --region "0.3,0.3,0.7,0.7@1" --out out
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _region(text: str) -> tuple[tuple[float, float, float, float], int]:
    """``"x0,y0,x1,y1@frame"`` (fractions of the frame, a latent frame index)."""
    try:
        box, frame = text.split("@")
        x0, y0, x1, y1 = (float(v) for v in box.split(","))
        return (x0, y0, x1, y1), int(frame)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected x0,y0,x1,y1@frame (box corners as fractions of the frame, a latent frame index), e.g. "
            f"0.3,0.2,0.6,0.5@4; got {text!r}") from None


def add_heatmap_arguments(parser: argparse.ArgumentParser) -> None:
    """``--heatmaps``, ``--word``, ``--region``, ``--received``, ``--map-steps`` on ``attnsteer inspect``."""
    group = parser.add_argument_group("spatial heatmaps (any of these keeps the per-pixel reference-frame map too)")
    group.add_argument("--heatmaps", action="store_true",
                       help="keep per-pixel maps: the mass each token puts on the reference frame(s)")
    group.add_argument("--word", action="append", default=[], metavar="WORD",
                       help="a prompt word whose per-pixel map to keep (repeatable; read from the text cross-attention "
                            "of models that have one, such as Wan)")
    group.add_argument("--region", action="append", default=[], type=_region, metavar="x0,y0,x1,y1@frame",
                       help="a box of a latent frame whose attention on every token to keep (repeatable)")
    group.add_argument("--received", action="store_true", help="keep the attention each token draws from the video")
    group.add_argument("--map-steps", type=int, default=5, metavar="N",
                       help="equal step ranges the maps are averaged over")


def wants_heatmaps(args: argparse.Namespace) -> bool:
    return bool(args.heatmaps or args.word or args.region or args.received)


def inspect_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The ``at.inspect`` keyword arguments for the maps asked for on the command line ({} for none)."""
    import attnsteer as at

    if not wants_heatmaps(args):
        return {}
    if args.map_steps < 1:
        raise ConfigError(f"--map-steps must be a positive integer, got {args.map_steps}")
    maps = [at.maps.onto(at.frames.reference)]
    maps += [at.maps.onto(at.words(w), attention=_text_attention(model)) for w in args.word]
    maps += [at.maps.region(at.box(*box), frame=frame) for box, frame in args.region]
    maps += [at.maps.received()] if args.received else []
    options: dict[str, Any] = {"maps": maps, "map_steps": args.map_steps}
    if args.word:
        if not args.prompt:
            raise ConfigError("--word needs --prompt (the words are found in the prompt)")
        options.update(prompt=args.prompt, tokenizer=model.tokenizer())
    return options


def _text_attention(model: Any) -> str:
    """Where prompt words meet the video: "cross" for models with a separate text cross-attention (Wan),
    "self" for joint text+video self-attention (CogVideoX, HunyuanVideo)."""
    from ..session import resolve_targets

    targets, _ = resolve_targets(model.pipe)
    return "cross" if any(t.adapter.cross_attention_modules(t.model) for t in targets) else "self"


def write_heatmap_figures(rec: Any, video: Any, out: Path, fmt: str = "gif", fps: int = 8) -> list[Path]:
    """``maps.npz``, per-map grids over the decoded video (rows: step ranges; words side by side) and an
    animation of the reference-frame map; [] when the recording keeps no maps."""
    from ..figures.heatmaps import heatmaps_by_step, plot_heatmap_grid, save_heatmap_video

    maps = rec.maps
    if maps is None:
        return []
    branch = "cond" if "cond" in maps.branches else None
    written = [maps.save(out / "maps.npz")]
    words = [label for label in maps.labels if label.startswith("onto words(")]
    word_names = {label: label[len("onto "):].replace(" (cross-attention)", "") for label in words}
    regions = iter(range(1, len(maps.labels) + 1))
    for label in maps.labels:
        if label in words:
            continue
        name = {"onto frames.reference": "reference", "received from video": "received"}.get(label)
        path = out / f"heatmap_{name or f'region_{next(regions)}'}.png"
        plot_heatmap_grid(heatmaps_by_step(maps, label, branch=branch), path, video=video)
        written.append(path)
    if words:
        plot_heatmap_grid({word_names[label]: maps.heatmap(label, branch=branch) for label in words},
                          out / "heatmap_words.png", video=video)
        written.append(out / "heatmap_words.png")
    written.append(save_heatmap_video(maps.heatmap(0, branch=branch), video, out / f"heatmap_reference.{fmt}", fps=fps))
    return written
