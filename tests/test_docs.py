"""Every documented command and Python example runs as written, so docs that rot fail CI.

Every ```bash block line that calls ``attnsteer`` and every ```python block of README.md and
docs/*.md is run, in a temporary folder (relative ``--out`` paths land there). The substitutions:
``attnsteer demo`` is left to ``tests/test_demo.py``, which runs it with ``--quick`` (the full demo is
what the README's first set-up command runs), ``attnsteer study`` with 2 seeds of 2 steps, and ``run`` / ``inspect`` on the toy model with 3
steps. Not run: the README's two set-up commands (CI runs the second one itself) and blocks marked
``<!-- not-run: reason -->`` right before them (signatures, real checkpoints). The Python blocks of one
file run in order in one namespace, as a reader would paste them.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from attnsteer.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<marker><!--\s*not-run:[^>]*-->\s*\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
SET_UP = ("python3 -m venv",)
QUICK = {"study": ["--seeds", "2", "--steps", "2"]}  # later flags win in argparse
TOY_STEPS = ["--steps", "3"]  # runs and inspections of the toy model: as written, at 3 of its 20 default steps

pytestmark = pytest.mark.usefixtures("one_thread")


def blocks(path: Path, lang: str) -> list[str]:
    return [m["body"] for m in BLOCK.finditer(path.read_text()) if m["lang"] == lang and not m["marker"]]


def shell_commands() -> list[str]:
    """Distinct documented ``attnsteer`` command lines, comments stripped."""
    found: dict[str, None] = {}
    for path in DOCS:
        for body in blocks(path, "bash"):
            for line in body.splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith(SET_UP) or not line or line.startswith("#"):
                    continue
                assert line.startswith("attnsteer "), f"{path.name}: a documented command the docs test cannot run: {line}"
                found[line] = None
    return list(found)


COMMANDS = shell_commands()
PYTHON_DOCS = [path for path in DOCS if blocks(path, "python")]


def test_the_docs_document_commands_and_examples():
    assert len(COMMANDS) >= 10 and len(PYTHON_DOCS) >= 5


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_runs_as_written(command, tmp_path, monkeypatch):
    argv = shlex.split(command)[1:]
    if argv[0] == "demo":
        pytest.skip("tests/test_demo.py runs `attnsteer demo --quick --out DIR` and checks what it writes")
    argv += QUICK.get(argv[0], [])
    if argv[0] in ("run", "inspect") and "toy" in argv:
        argv += TOY_STEPS
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, command


@pytest.mark.parametrize("path", PYTHON_DOCS, ids=lambda p: p.name)
def test_documented_python_runs_as_written(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    with contextlib.redirect_stdout(io.StringIO()):
        for i, body in enumerate(blocks(path, "python")):
            exec(compile(body, f"{path.name} python block {i + 1}", "exec"), namespace)
