"""The attnsteer command on the built-in tiny model: files written, records readable, errors clear."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import attnsteer as at
from attnsteer.cli import build_parser, main
from attnsteer.testing.tiny import TINY_MODELS
from attnsteer.figures.videoio import load_video


def test_recipes_lists_parameters(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "dymos(gamma: 'float' = 0.6" in out or "dymos(gamma: float = 0.6" in out
    assert "reference_queries" in out


def test_a_closed_pipe_ends_the_listing_quietly():
    """`attnsteer recipes | head`: the reader leaves early (here: before anything is written); no "unexpected
    error" line, no traceback."""
    import subprocess
    import sys

    done = subprocess.run(["bash", "-c", f"{sys.executable} -m attnsteer.cli recipes | true"], capture_output=True,
                          text=True, timeout=120)
    assert "error" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_run_writes_video_and_record(tmp_path, image):
    image_path = tmp_path / "in.png"
    image.save(image_path)
    out = tmp_path / "run"
    code = main(["run", "--model", "tiny-wan", "--recipe", "dymos", "--gamma", "0.6", "--until-step", "2",
                 "--image", str(image_path), "--prompt", "a cat", "--out", str(out), "--format", "gif"])
    assert code == 0
    assert load_video(out / "video.gif").shape == (9, 64, 64, 3)
    record = json.loads((out / "run.json").read_text())
    assert record["recipe"] == "dymos(gamma=0.6, until_step=2)"
    (rule,) = record["applied"]["rules"]
    assert rule["steps"] == [0, 1] and rule["branches"] == ["cond"] and len(rule["layers"]) == 2


def test_inspect_writes_record_and_figures(tmp_path, capsys):
    out = tmp_path / "inspect"
    assert main(["inspect", "--model", "tiny-wan", "--recipe", "dymos", "--gamma", "2", "--stop", "0.5",
                 "--steps", "2", "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    report = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"wrote {len(written)} files" in report and all(name in report for name in written)
    rec = at.Record.load(out / "record.npz")
    assert rec.frame_map().shape == (3, 3) and rec.steps == [0, 1]
    for name in ("frame_map", "frame_maps_by_step", "reference_mass_by_step", "reference_mass_by_layer",
                 "diff_vs_vanilla"):
        with Image.open(out / f"{name}.png") as im:
            assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 5


def test_bad_model_and_gamma_fail_with_a_message(tmp_path, capsys):
    assert main(["run", "--model", "tiny-nothing", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # one short line pointing to the list, not the 35 names
    assert "`attnsteer models` lists the built-in models" in err and err.count("\n") == 1 and len(err) < 300
    assert main(["run", "--model", "tiny-wan", "--recipe", "dymos", "--gamma", "nan", "--out", str(tmp_path)]) == 2
    assert "gamma" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--gamma", "a,b", "--out", str(tmp_path)])


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_run_works_on_every_tiny_family(tmp_path, name):
    """`attnsteer run --model tiny-<family>` steers each family and records which rules hit which layers."""
    out = tmp_path / name
    assert main(["run", "--model", name, "--recipe", "dymos", "--gamma", "1", "--until-step", "1", "--steps", "2",
                 "--out", str(out), "--format", "gif"]) == 0
    assert load_video(out / "video.gif").ndim == 4
    (rule,) = json.loads((out / "run.json").read_text())["applied"]["rules"]
    assert rule["steps"] == [0] and rule["branches"] == ["cond"] and rule["layers"]


def test_negative_values_after_an_option_parse_as_written():
    from attnsteer.cli import join_negative_values

    argv = ["sweep", "--gamma", "-2,-1,0,0.6,1", "--stop", "0.5", "--out", "x", "--alpha", "-1e-3"]
    assert join_negative_values(argv) == ["sweep", "--gamma=-2,-1,0,0.6,1", "--stop", "0.5", "--out", "x",
                                          "--alpha=-1e-3"]
    assert join_negative_values(["run", "--gamma", "0.6", "--quick", "-v"]) == ["run", "--gamma", "0.6", "--quick", "-v"]
    args = build_parser().parse_args(join_negative_values(["sweep", "--gamma", "-2,-1", "--out", "x"]))
    assert args.gamma == [-2.0, -1.0]


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "wan-tiny"], "did you mean 'tiny-wan'"),
    (["run", "--model", "./no-such-dir"], "no such pipeline directory"),
    (["run", "--gamma", "0.6"], "--gamma set a recipe parameter but no --recipe"),
    (["run", "--steps", "0"], "--steps: expected a positive integer"),
    (["run", "--steps", "-3"], "--steps: expected a positive integer"),
    (["run", "--frames", "0"], "--frames: expected a number of video frames in 1..1024"),
    (["run", "--guidance", "nan"], "--guidance: expected a finite number"),
    (["run", "--image", "no-such.png"], "--image: no such file"),
    (["run", "--dtype", "float64"], "--dtype must be one of"),
    (["run", "--device", "tpu"], "--device must be one of"),
    (["run", "--image", __file__], "is not an image Pillow can read"),
    (["sweep", "--stop", "0"], "--stop: expected a fraction of the steps in (0, 1]"),
    (["sweep", "--gamma", "nan"], "--gamma: expected comma-separated finite numbers"),
    (["sweep", "--gamma", "-1,x"], "--gamma: expected comma-separated finite numbers"),
    (["run", "--recipe", "dymos", "--gamma", "inf"], "--recipe dymos --gamma inf: dymos(gamma=...) must be finite"),
    (["run", "--recipe", "dymos", "--until-step", "-1"], "--recipe dymos --until-step -1: dymos(until_step=...) must be an int >= 1"),
])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(tmp_path, capsys, argv, message):
    assert exit_code(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message.lstrip("-") in err[-1] and "Traceback" not in "\n".join(err)


def exit_code(argv: list[str]) -> int:
    """main's exit status, whether argparse exits (bad flag syntax) or main returns it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["run", "--out", str(target)])
    assert info.value.code == 2 and "exists and is not a folder" in capsys.readouterr().err
