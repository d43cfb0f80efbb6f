"""The grouped kernel's chunk decision, and that the benchmark guard runs (``benchmarks/guard.py`` itself
is a benchmark, never run in CI: its dry run only proves the script works)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnsteer.kernels import grouped, grouped_attention
from attnsteer.kernels.grouped import grouped_attention_chunks

ROOT = Path(__file__).resolve().parents[1]


def counting_class_calls(monkeypatch) -> list[int]:
    """Patch the kernel's fused call to record the query rows of every call."""
    rows: list[int] = []
    inner = grouped.class_attention

    def counted(q, *args, **kwargs):
        rows.append(q.shape[-2])
        return inner(q, *args, **kwargs)

    monkeypatch.setattr(grouped, "class_attention", counted)
    return rows


def problem(n=600, heads=4, dim=16, frames=3):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g) for _ in range(3))
    ids = torch.arange(n) * frames // n
    bias = torch.zeros(frames, frames)
    bias[1:, 0] = -0.6
    return q, k, v, ids, bias


def test_query_chunk_rows_runs_small_calls_whole_and_large_ones_in_chunks(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    n, heads = 32760, 4
    row_bytes = heads * 128 * 4  # one float32 class output per query row
    assert n * row_bytes > grouped.WHOLE_BYTES
    assert grouped.query_chunk_rows(4096, 8, 8 * 64 * 4) == 4096  # DyMoS-sized call (8 MB output): whole
    step = grouped.query_chunk_rows(n, heads, row_bytes)  # heatmap-sized call: QUERY_CHUNKS chunks
    assert -(-n // step) == grouped.QUERY_CHUNKS
    assert grouped.query_chunk_rows(n, heads) == step  # no row_bytes (chunking for memory): the same chunks
    assert grouped.query_chunk_rows(1024, 1, None) == 1024  # too few query blocks to split among the threads
    assert grouped.query_chunk_rows(4096, 8, None) == 1024  # chunks of at least MIN_CHUNK_BLOCKS blocks
    assert grouped.query_chunk_rows(5000, 64, None) % grouped.QUERY_BLOCK == 0  # whole blocks


@pytest.mark.parametrize("mass", [False, True])
def test_plain_and_group_mass_calls_chunk_only_above_whole_bytes(monkeypatch, mass):
    q, k, v, ids, bias = problem()
    rows = counting_class_calls(monkeypatch)
    whole, whole_mass = grouped_attention(q, k, v, ids, ids, bias=bias, return_mass=mass)
    classes = 3 if mass else 2  # with the mass, one class per frame; without, frame 0 and frames 1..
    assert rows == [600] * classes  # small: one chunk
    rows.clear()
    monkeypatch.setattr(grouped, "WHOLE_BYTES", 600 * grouped._row_bytes(q, v, classes if mass else 0, 0) - 1)
    monkeypatch.setattr(grouped, "QUERY_BLOCK", 10)
    monkeypatch.setattr(grouped, "BLOCKS_PER_THREAD", 1)
    chunked, chunked_mass = grouped_attention(q, k, v, ids, ids, bias=bias, return_mass=mass)
    assert len(rows) == classes * grouped.QUERY_CHUNKS and sum(rows) == 600 * classes  # one byte over: chunks
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    if mass:
        torch.testing.assert_close(chunked_mass, whole_mass, atol=1e-6, rtol=0)


def test_per_query_chunks_count_the_recorded_weights(monkeypatch):
    """The heatmaps' chunked pass counts its per-query weights [B, H, r, Gk] among the chunk's buffers."""
    q, k, v, ids, bias = problem()
    rows = counting_class_calls(monkeypatch)
    monkeypatch.setattr(grouped, "QUERY_BLOCK", 10)
    monkeypatch.setattr(grouped, "BLOCKS_PER_THREAD", 1)
    monkeypatch.setattr(grouped, "WHOLE_BYTES", 600 * grouped._row_bytes(q, v, 3, 0))  # fits without the weights
    list(grouped_attention_chunks(q, k, v, ids, ids, None, bias=bias))
    assert len(rows) == 3 * grouped.QUERY_CHUNKS
    rows.clear()
    monkeypatch.setattr(grouped, "WHOLE_BYTES", 600 * grouped._row_bytes(q, v, 3, 3))
    assert len(list(grouped_attention_chunks(q, k, v, ids, ids, None, bias=bias))) == 1
    assert rows == [600] * 3


def test_benchmark_guard_dry_run():
    done = subprocess.run([sys.executable, "-m", "benchmarks.guard", "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert table[0].split()[:3] == ["case", "shape", "measure"]
    measured = table[1:]
    assert len(measured) == 14 and all(" dry" in line for line in measured), done.stdout
    for needle in ("DyMoS", "16 key groups", "frame maps", "pixel maps", "live tensors", "tiny-wan", "token-distance",
                   "frame-window rule", "box rule"):
        assert any(needle in line for line in measured), needle


def test_per_call_benchmark_runs_breakdown_dry_run():
    """``python -m benchmarks.percall --runs`` (where a whole steered run's overhead goes) runs and prints its rows."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.percall", "--runs", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = [line for line in done.stdout.splitlines() if line.startswith("| run ")]
    assert [line.split(" | ")[0] for line in measured] == [
        "| run in a session, rule never on", "| run in a session, DyMoS on", "| run entering its own session, DyMoS on"]
    assert all(" dry" in line for line in measured)
