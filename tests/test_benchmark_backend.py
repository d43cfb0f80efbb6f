"""``python -m benchmarks.kernel --backend NAME`` runs (``benchmarks/backend.py`` is a benchmark, never run in CI: its
dry run only proves the script works and that the steered calls reach the named backend)."""

from __future__ import annotations

import sys
import warnings

import pytest

pytest.importorskip("diffusers.models.attention_dispatch")

from benchmarks import kernel  # noqa: E402


def run_kernel_benchmark(monkeypatch, capsys, *arguments: str) -> tuple[int, str]:
    """(exit status, stdout) of ``python -m benchmarks.kernel ARGUMENTS``, run in this process."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    monkeypatch.setattr(sys, "argv", ["benchmarks.kernel", *arguments])
    try:
        with warnings.catch_warnings(), pytest.raises(SystemExit) as done:
            kernel.main()
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return done.value.code, capsys.readouterr().out


def test_kernel_benchmark_on_the_flex_backend_dry_run_prints_every_variant_and_flex_routes(monkeypatch, capsys):
    status, out = run_kernel_benchmark(monkeypatch, capsys, "--backend", "flex", "--dry-run")
    assert status == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].split(" | ")[:3] == ["| case", "shape", "measure"]
    measured = rows[1:]
    assert len(measured) == 4 and all("time / unsteered flex" in r and " dry" in r for r in measured), out
    for needle in ("DyMoS", "score function", "frame maps", "unsteered on native"):
        assert any(needle in r for r in measured), needle
    # both steered variants ran their steered calls on flex itself (key classes; the score function as score_mod)
    assert out.count("steered calls by route {'flex': {'backend': 2}}") == 2, out


def test_kernel_benchmark_refuses_a_backend_diffusers_cannot_run_with_status_2(monkeypatch, capsys):
    status, out = run_kernel_benchmark(monkeypatch, capsys, "--backend", "no_such_backend", "--dry-run")
    assert status == 2
    assert "backend 'no_such_backend' cannot run here: ValueError" in out
