"""Every shipped recipe on the toy model: the unsteered and the steered clip side by side, the frame map
change that explains the difference, and the number that measures it.

    python -m attnsteer.toy.gallery              # regenerates docs/gallery.md and docs/img/gallery/*.png
    python -m attnsteer.toy.gallery --quick --out /tmp/gallery   # 1 clip, 2 steps: a smoke run

Each exhibit runs the same clips and seeds twice, without and with the recipe, with attention
recorded; the caption's numbers are means over the clips, computed by :mod:`attnsteer.toy.evaluate`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from . import evaluate
from .world import Clip

FULL = {"clips": 16, "steps": evaluate.STEPS}
QUICK = {"clips": 1, "steps": 2}
VISIBLE = 0.01  # mean absolute pixel change (0..1) below which the gallery says a recipe does nothing visible
BOX, END_BOX = "0.0,0.0,0.5,0.5", "0.5,0.5,1.0,1.0"  # the region recipes' path: top left to bottom right


def box_distance(video: Any, clip: Clip, box: str = BOX, end_box: str = END_BOX) -> float:
    """Mean distance (px) of the colour-tracked sprite to the centre of the box moving from ``box`` to ``end_box``."""
    from ..figures.videoio import as_frames

    frames = as_frames(video)
    track = evaluate.sprite_track(frames, clip)
    (a, b) = (np.array([float(v) for v in s.split(",")]) for s in (box, end_box))
    along = np.linspace(0, 1, len(track))[:, None]
    corners = (1 - along) * a + along * b
    centres = np.stack([(corners[:, 0] + corners[:, 2]) / 2 * frames.shape[2],
                        (corners[:, 1] + corners[:, 3]) / 2 * frames.shape[1]], axis=1)
    found = ~np.isnan(track).any(axis=1)
    return float(np.linalg.norm(track[found] - centres[found], axis=1).mean()) if found.any() else float("nan")


METRICS: dict[str, tuple[str, Callable[[Any, Clip], float] | None]] = {
    # name -> (what it says, a function of (video, clip); None: a column of evaluate.per_clip)
    "speed": ("tracked sprite speed, px/frame", None),
    "flow": ("optical flow, px per frame pair", None),
    "frame_diff": ("mean squared difference of consecutive frames", None),
    "ssim_later": ("SSIM of frames 1.. to the reference image", None),
    "bg_psnr": ("background PSNR to the reference, dB", None),
    "colour_err": ("sprite colour error (RGB distance)", None),
    "box_distance": ("distance of the tracked sprite to the box path's centre, px", box_distance),
}


@attrs.frozen
class Exhibit:
    """One recipe's gallery entry: its settings on the toy, what it is for, the metric that measures it,
    and why it may do nothing visible there."""

    recipe: str
    params: dict[str, Any]
    purpose: str
    metric: str = attrs.field(validator=attrs.validators.in_(METRICS))
    idle_reason: str = "the toy model has no feature this method acts on"
    not_hosted: str | None = None  # why the toy cannot run it at all (the gallery then says so instead of a figure)
    mask_word: bool = False  # needs a mask (subject_motion): each clip's direction-word map from its unsteered run
    map_recipe: tuple[str, dict[str, Any], str] | None = None  # multi-pass recipes have no single attention map:
    # (recipe, params, what it shows) of a run whose frame map change explains theirs
    note: str = ""  # what else was measured, where the figure alone would mislead


LOCAL_ON_THE_TOY = ("On the toy, frames more than one away from frame 0 cannot see the reference frame, and the toy "
                    "draws its sprite from that frame: from frame 2 on the picture breaks up, and the rise in frame "
                    "difference is that breakage, not motion.")
SPECKLE_ON_THE_TOY = ("By eye: at this scale the push away from the perturbed prediction adds speckle to the toy's "
                      "flat background and around the sprite, which is what the fall in background PSNR measures; "
                      "nothing on the toy needed sharpening.")
WINDOWS_ON_THE_TOY = ("On the toy, frames outside a window cannot see the reference frame in that pass, and the "
                      "toy draws its sprite from that frame: from frame 4 on the sprite breaks into blocks, and "
                      "the rise in frame difference is that breakage. The method is for clips longer than a model "
                      "was trained on; the toy's 9 frames are its training length.")

EXHIBITS: tuple[Exhibit, ...] = (
    Exhibit("dymos", {"gamma": 1.0, "stop": 0.3},
            "More motion in image-to-video: a -gamma logit bias from generated frames to the reference frame, "
            "cond branch, first 30% of the steps.", "speed",
            "by the last frame the sprite is a pixel or two further on; paired by seed, the speed-up is real "
            "([toy.md](toy.md#the-5-values-x-16-seeds-study-on-the-shipped-weights))"),
    Exhibit("direct_a_video", {"phrase": "slow", "box": BOX, "end_box": END_BOX, "attention": "cross"},
            "Move an object along a box path: amplify the object's phrase inside the box, block it outside.",
            "box_distance", not_hosted=(
                "the toy's prompt is two words that name the motion, not the sprite, and it has no start, end or "
                "padding tokens: the method blocks every other word for all pixels and the phrase outside the box, "
                "which leaves the pixels outside the box no key at all (attnsteer refuses such a call)")),
    Exhibit("enhance_a_video", {},
            "Temporal quality: scale the video output rows of self-attention by the cross-frame intensity.", "flow",
            "the toy's 9 frames and 4 layers give a cross-frame intensity near the clamp of 1"),
    Exhibit("local_window", {"window": 3},
            "Long videos: block attention between latent frames outside each frame's window (here 3 of 9).",
            "frame_diff", note=LOCAL_ON_THE_TOY),
    Exhibit("peekaboo", {"box": BOX, "end_box": END_BOX, "frozen_steps": 2},
            "Place an object in a moving box: isolate the box's tokens from the rest for the first steps.",
            "box_distance"),
    Exhibit("pag", {"scale": 3.0},
            "Quality guidance: a third branch whose self-attention is the identity, pushed away from.", "bg_psnr",
            note=SPECKLE_ON_THE_TOY),
    Exhibit("stg", {"mode": "R", "scale": 1.0},
            "Spatiotemporal skip guidance: a third branch that skips a block, pushed away from.", "bg_psnr",
            note=SPECKLE_ON_THE_TOY),
    Exhibit("proportional_attention", {"train_tokens": 144},
            "Resolution extrapolation: scale logits by log(N) / log(N_train) so entropy stays as in training "
            "(here as if trained at a quarter of the toy's 576 tokens).", "ssim_later"),
    Exhibit("ultravico", {"train_frames": 5},
            "Length extrapolation: damp attention beyond the trained frame span (here as if trained on 5 frames).",
            "ssim_later"),
    Exhibit("subject_motion", {"gamma": 1.0, "threshold": 0.85, "stop": 0.3},
            "Motion for the subject only: DyMoS's bias on the tokens of a mask drawn from attention (here each "
            "clip's map of its direction word, from its unsteered run).",
            "speed", "DyMoS on the whole frame moves the sprite only a pixel or two (see dymos above), and the mask "
            "keeps part of that", mask_word=True,
            note="With `background=-1` as well (the rest held to the reference) the sprite slows instead: "
                 "1.20 → 1.10 px/frame on the same 16 clips."),
    Exhibit("nag", {"scale": 5.0, "negative_prompt": "still slow"},
            "Guidance in few-step or guidance-free sampling: the text cross-attention output pushed away from a "
            "negative prompt's (here 'still slow') and renormalised.", "speed"),
    Exhibit("seg", {"scale": 3.0},
            "Quality guidance: a third branch whose self-attention queries are blurred (here: infinitely, to their "
            "mean per frame), pushed away from.", "bg_psnr",
            note="Every setting tried lowers the toy's background PSNR (4 clips: scale 0.5: 34 → 26 dB; 1: 20 dB; "
                 "1 with sigma 2: 22 dB): trained on one clean world, the toy has no blur for the guidance to take "
                 "away, and the push over-saturates the colours."),
    Exhibit("freelong", {"window": 4},
            "Long videos: each temporal attention run globally and within a window of frames (here 4 of 9), "
            "blended in 3-D frequency space (low from global, high from local).", "frame_diff",
            map_recipe=("local_window", {"window": 4}, "FreeLong's local pass alone (local_window, window 4)"),
            note=WINDOWS_ON_THE_TOY),
    Exhibit("freenoise", {"window": 5, "stride": 2, "noise": False},
            "Long videos: attention in overlapping windows of frames (here 5, every 2) fused with pyramid weights; "
            "its initial-noise shuffle is off (the toy pipeline has no prepare_latents).", "frame_diff",
            map_recipe=("local_window", {"window": 5}, "a 5-frame window about each frame (local_window, window 5), "
                        "the span of one FreeNoise window"), note=WINDOWS_ON_THE_TOY),
)


def check_exhibits(exhibits: Sequence[Exhibit] = EXHIBITS) -> None:
    """Every built-in recipe has exactly one exhibit (a new recipe cannot be left out of the gallery)."""
    from ..language.recipe import available_recipes

    built_in = {name for name, spec in available_recipes().items() if spec.source == "built-in"}
    shown = [e.recipe for e in exhibits]
    missing, unknown = built_in - set(shown), set(shown) - built_in
    if missing or unknown or len(shown) != len(set(shown)):
        raise ConfigError(f"gallery exhibits must name each built-in recipe once: missing {sorted(missing)}, "
                          f"unknown {sorted(unknown)}, exhibits {shown}")


def metric_values(name: str, videos: Sequence[np.ndarray], clips: Sequence[Clip]) -> list[float]:
    """The metric ``name`` of each video against its clip."""
    function = METRICS[name][1]
    if function is not None:
        return [function(v, c) for v, c in zip(videos, clips, strict=True)]
    return [row[name] for row in evaluate.per_clip(videos, clips)]


def run_exhibit(pipe: Any, exhibit: Exhibit, clips: Sequence[Clip], steps: int, vanilla: Any) -> dict[str, Any]:
    """The steered run of ``exhibit`` on ``clips`` beside the ``vanilla`` (videos, record) run."""
    from ..language.recipe import get_recipe
    from ..session import inspect, steer

    base_videos, base_record = vanilla
    if exhibit.mask_word:
        base_videos, videos, steered_map, base_map = _masked_runs(pipe, exhibit, clips, steps)
    else:
        recipe = get_recipe(exhibit.recipe)(**exhibit.params)
        if exhibit.map_recipe is None:
            with inspect(pipe) as record, steer(pipe, recipe, prompt=clips[0].prompt):
                videos = evaluate.generate(pipe, clips, steps)
        else:  # a multi-pass call records no map: the explaining recipe's run gives the frame map
            with steer(pipe, recipe):
                videos = evaluate.generate(pipe, clips, steps)
            name, params, _ = exhibit.map_recipe
            with inspect(pipe) as record, steer(pipe, get_recipe(name)(**params)):
                evaluate.generate(pipe, clips, steps)
        steered_map, base_map = record.frame_map(branch="cond"), base_record.frame_map(branch="cond")
    before = metric_values(exhibit.metric, base_videos, clips)
    after = metric_values(exhibit.metric, videos, clips)
    change = float(np.mean([np.abs(a.astype(np.float64) - b).mean() for a, b in zip(videos, base_videos)]))
    diff = (steered_map - base_map).numpy()
    return {"exhibit": exhibit, "videos": videos, "base_videos": base_videos, "diff": diff,
            "before": float(np.nanmean(before)), "after": float(np.nanmean(after)), "pixel_change": change}


def _masked_runs(pipe: Any, exhibit: Exhibit, clips: Sequence[Clip], steps: int) -> tuple[list, list, Any, Any]:
    """(unsteered videos, steered videos, steered and unsteered mean frame maps) of a recipe that takes a mask:
    clip by clip, the unsteered run records the map of the clip's direction word (the first of its prompt), its
    mask (``at.masks.from_attention``) goes to the recipe through a file, as on the command line."""
    import tempfile

    from ..inspection import maps, masks
    from ..language.recipe import get_recipe
    from ..language.words import words
    from ..session import inspect, steer

    base_videos, videos, base_maps, steered_maps = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for i, clip in enumerate(clips):
            word = clip.prompt.split()[0]
            spec = maps.onto(words(word), attention="cross")
            with inspect(pipe, maps=[spec], prompt=clip.prompt, tokenizer=pipe.tokenizer) as base:
                base_videos += evaluate.generate(pipe, [clip], steps, seed=i)
            path = masks.save(masks.from_attention(base, word=word, threshold=exhibit.params["threshold"]),
                              Path(folder) / f"mask_{i}.npz")
            recipe = get_recipe(exhibit.recipe)(mask=str(path), **exhibit.params)
            with inspect(pipe) as record, steer(pipe, recipe):
                videos += evaluate.generate(pipe, [clip], steps, seed=i)
            base_maps.append(base.frame_map(branch="cond"))
            steered_maps.append(record.frame_map(branch="cond"))
    return base_videos, videos, sum(steered_maps) / len(clips), sum(base_maps) / len(clips)


def caption(result: dict[str, Any], clips: int) -> str:
    """Two lines: what the method is for, and what its metric did (with the numbers)."""
    exhibit: Exhibit = result["exhibit"]
    what = METRICS[exhibit.metric][0]
    measured = (f"**Measured:** {what}: {result['before']:.3g} unsteered → {result['after']:.3g} steered "
                f"(mean over {clips} clip{'s' * (clips > 1)}); mean pixel change {result['pixel_change']:.3f}.")
    if result["pixel_change"] < VISIBLE:
        measured += f" Nothing visible changes on the toy: {exhibit.idle_reason}."
    if exhibit.note:
        measured += f" {exhibit.note}"
    return f"**For:** {exhibit.purpose}  \n{measured}"


def write_gallery(out: Path, quick: bool = False, exhibits: Sequence[Exhibit] = EXHIBITS) -> Path:
    """Run every exhibit and write ``out/img/gallery/NAME.png`` and ``out/gallery.md``; returns the page's path."""
    from ..figures.side_by_side import plot_side_by_side
    from ..session import inspect
    from ..toy import load_toy_pipeline
    from .threads import one_thread

    if exhibits is EXHIBITS:
        check_exhibits()
    settings = QUICK if quick else FULL
    clips, steps = evaluate.evaluation_clips(settings["clips"]), settings["steps"]
    images = out / "img" / "gallery"
    images.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sections = []
    with one_thread():
        pipe = load_toy_pipeline()
        with inspect(pipe) as base_record:
            base_videos = evaluate.generate(pipe, clips, steps)
        for exhibit in tqdm(exhibits, desc="gallery", unit="recipe"):
            if exhibit.not_hosted:
                sections.append(f"## {exhibit.recipe}\n\n**For:** {exhibit.purpose}  \n**Not shown:** the toy "
                                f"model cannot host it: {exhibit.not_hosted}.\n")
                continue
            result = run_exhibit(pipe, exhibit, clips, steps, (base_videos, base_record))
            settings_text = ", ".join(f"{k}={v!r}" for k, v in exhibit.params.items())
            map_title = (f"frame map, steered minus unsteered\ncond branch, all {steps} steps, all layers"
                         if exhibit.map_recipe is None else
                         f"frame map change of {exhibit.map_recipe[2]}\n(a multi-pass call has no single map)")
            plot_side_by_side({"unsteered": result["base_videos"][0], "steered": result["videos"][0]}, result["diff"],
                              images / f"{exhibit.recipe}.png", upscale=4,
                              title=f"{exhibit.recipe}({settings_text}) on the toy model: clip 1, prompt "
                                    f"'{clips[0].prompt}', {steps} steps",
                              map_title=map_title)
            sections.append(f"## {exhibit.recipe}\n\n![{exhibit.recipe}](img/gallery/{exhibit.recipe}.png)\n\n"
                            f"{caption(result, len(clips))}\n")
    seconds = time.perf_counter() - started
    page = out / "gallery.md"
    page.write_text(HEADER.format(clips=len(clips), steps=steps, seconds=seconds) + "\n".join(sections))
    return page


HEADER = """# The recipe gallery: every shipped recipe on the toy model

Written by `python -m attnsteer.toy.gallery` ({clips} clips, {steps} steps, guidance 3; {seconds:.0f} s on the
machine that wrote it). For each recipe: the unsteered and the steered video of the same clip and seed
(frames left to right), and, on the right, how the recipe changed the frame map (which frame attends to which;
red: more attention than unsteered, blue: less). The caption says what the method is for and what the metric
that measures it did, as means over the clips. The toy model is described in [toy.md](toy.md); its metrics
are weight-free stand-ins, to be read as changes, never as benchmark numbers.

"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs"),
                        help="folder of gallery.md (figures under img/gallery)")
    parser.add_argument("--quick", action="store_true", help="1 clip, 2 steps: a smoke run")
    args = parser.parse_args(argv)
    print(f"wrote {write_gallery(args.out, args.quick)}")


if __name__ == "__main__":
    main()
