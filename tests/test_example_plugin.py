"""The out-of-tree example plugin (tests/example_plugin): its adapter and recipe are found through entry
points and run through the Python API and the CLI, exactly (against a dense computation written here).

The package is "installed" at test time without pip: its modules are copied to a temporary folder
next to an ``attnsteer_example-0.1.0.dist-info`` whose ``entry_points.txt`` is written from the
package's pyproject.toml, and the folder is put on sys.path, so importlib.metadata finds it as it
finds any installed distribution.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.language import recipe as recipe_registry
from attnsteer.cli import main
from attnsteer.contract import registry as manager
from dense_reference import DenseAttention, frame_bias, hook_state

EXAMPLE = Path(__file__).parent / "example_plugin"
FRAMES, ROWS, COLS, TEXT = 3, 4, 4, 4  # the example pipeline's defaults
PER_FRAME = ROWS * COLS
SEQ = FRAMES * PER_FRAME + TEXT


def build_distribution(target: Path) -> None:
    """The example package and a dist-info holding its entry points, as an installer would write them."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "attnsteer_example", target / "attnsteer_example")
    info = target / f"attnsteer_example-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = [f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
              for group, entries in project["entry-points"].items()]
    (info / "entry_points.txt").write_text("\n".join(groups))


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example distribution on sys.path for this module's tests; everything it registered is gone after."""
    folder = tmp_path_factory.mktemp("site")
    build_distribution(folder)
    registry = dict(recipe_registry._REGISTRY)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        manager.plugin_manager.cache_clear()
        recipe_registry._load_entry_points.cache_clear()
        from attnsteer_example.model import tiny_pipeline

        yield tiny_pipeline
    for name in [m for m in sys.modules if m.split(".")[0] == "attnsteer_example"]:
        del sys.modules[name]
    recipe_registry._REGISTRY.clear()
    recipe_registry._REGISTRY.update(registry)
    manager.plugin_manager.cache_clear()
    recipe_registry._load_entry_points.cache_clear()


def run(pipe, **overrides):
    kwargs = {"output_type": "latent", **overrides}
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0]


def test_entry_points_register_the_adapter_and_the_recipe(example):
    pipe = example()
    adapter = manager.find_adapter(pipe.transformer)
    assert type(adapter).__name__ == "ExampleAdapter" and adapter.family == "example"
    assert "example" in manager.supported_families()
    spec = recipe_registry.get_recipe("hold_still")
    assert spec.source == "attnsteer_example.recipes"
    assert [(p.name, p.kind, p.default) for p in spec.parameters] == [("strength", float, 1.0), ("until_step", int, None)]
    with pytest.raises(at.ConfigError, match=r"hold_still\(strength=\.\.\.\) must be a real number"):
        spec(strength="strong")


def test_python_api_steers_the_example_model_exactly(example):
    pipe = example()
    hold_still = recipe_registry.get_recipe("hold_still")
    vanilla = run(pipe)
    before = hook_state(pipe.transformer)
    with at.steer(pipe, hold_still(strength=0.0)):
        np.testing.assert_allclose(run(pipe), vanilla, atol=1e-5)
    with at.steer(pipe, hold_still(strength=2.0, until_step=1)) as steering:
        steered = run(pipe)
    assert steering.summary()["rules"][0]["layers"] == ["transformer.blocks.0.attn", "transformer.blocks.1.attn"]
    steps = iter(range(2 * len(pipe.transformer.blocks)))  # 2 steps x layers; the rule acts in step 0

    def bias(q):  # batch [uncond, cond]: frames 1, 2 -> frame 0 in the conditional row, video first
        return frame_bias(SEQ, 0, FRAMES, PER_FRAME, 2.0, [1], 2) if next(steps) < len(pipe.transformer.blocks) else None

    with DenseAttention(bias, seq_len=SEQ):
        reference = run(pipe)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-5)
    assert np.array_equal(run(pipe), vanilla) and hook_state(pipe.transformer) == before
    with at.inspect(pipe) as rec:
        run(pipe)
    assert rec.layout.grid == (ROWS, COLS) and rec.layout.segments[0].start == FRAMES * PER_FRAME
    torch.testing.assert_close(rec.frame_map().sum(-1) + rec.text_mass(), torch.ones(FRAMES), atol=1e-5, rtol=0)


def cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def test_cli_lists_and_runs_the_example(example, tmp_path):
    code, listed = cli(["recipes"])
    assert code == 0 and "hold_still(strength: float = 1.0, until_step: int | None = None)  [attnsteer_example" in listed
    code, families = cli(["models"])
    assert code == 0 and "example (ExampleVideoTransformer)" in families
    code, _ = cli(["run", "--model", "attnsteer_example.model:tiny_pipeline", "--recipe", "hold_still",
                   "--param", "strength=2", "--param", "until-step=1", "--out", str(tmp_path), "--format", "gif"])
    assert code == 0
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["recipe"] == "hold_still(strength=2.0, until_step=1)"
    (rule,) = record["applied"]["rules"]
    assert rule["steps"] == [0] and rule["branches"] == ["cond"] and len(rule["layers"]) == 2


def test_docs_extending_lists_the_example_files_as_they_are():
    """docs/extending.md walks through the example package; each file it shows is the file itself."""
    import re

    root = EXAMPLE.parent.parent
    text = (root / "docs" / "extending.md").read_text()
    shown = re.findall(r"<!-- not-run: the file (\S+) -->\n```\w*\n(.*?)```", text, re.S)
    assert {path for path, _ in shown} == {"tests/example_plugin/attnsteer_example/adapter.py",
                                          "tests/example_plugin/attnsteer_example/recipes.py",
                                          "tests/example_plugin/pyproject.toml"}
    for path, body in shown:
        assert body == (root / path).read_text(), f"docs/extending.md shows an outdated {path}"
