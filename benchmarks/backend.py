"""Benchmark: steered / unsteered attention on one diffusers attention backend (``python -m benchmarks.kernel
--backend NAME``; issue 25).

A Wan transformer (``benchmarks.percall``'s: 2 blocks, 4 heads x 64, 4 latent frames x 48 x 48 = 9,216 tokens,
random weights; ``--dry-run``: 2 heads, 256 tokens) runs with every attention processor on backend NAME
(``transformer.set_attention_backend``), so its self-attention reaches attnsteer through diffusers'
``dispatch_attention_fn`` as in a real run. Each round runs, in turn, one forward of each variant on that backend:

- unsteered (the baseline: the backend alone);
- DyMoS (-0.6 from frames 1.. onto frame 0: a group-constant bias, 2 key classes; on a backend that returns the
  log-sum-exp the classes run on it, elsewhere attnsteer's kernel does);
- a score function (``scale_if_positive(0.5)`` from frames 1.. onto frame 0: flex's ``score_mod`` on ``flex``,
  attnsteer's score path elsewhere);
- frame maps (``at.inspect``: every self-attention call recorded, from per-frame log-sum-exps);
- unsteered on ``native`` (information: what the backend itself costs against SDPA).

Sessions are entered outside the timed part (the steady state of a long run). The table gives, per variant, the
median and the spread of its time / the same round's unsteered time, and for steered variants which backend and
route computed the steered calls (``steered_calls_by_route`` of the session's summary). A benchmark, not a test:
its numbers mean something only on a quiet machine.

    python -m benchmarks.kernel --backend flex              # flex on CPU (uncompiled: torch materialises scores)
    python -m benchmarks.kernel --backend _native_math --rounds 5
    python -m benchmarks.kernel --backend flash             # on a GPU with flash-attn installed
    python -m benchmarks.kernel --backend native --dry-run  # tiny sizes, one round: proves the script runs
"""

from __future__ import annotations

import datetime
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import attnsteer as at
from benchmarks.common import machine, timed
from benchmarks.guard import Row, cpu_model, load
from benchmarks.percall import interleaved, large_transformer

VARIANTS = ("dymos", "score", "frame_maps", "native")
LABELS = {"dymos": "DyMoS (group-constant bias)", "score": "score function (scale_if_positive)",
          "frame_maps": "frame maps (at.inspect)", "native": "unsteered on native"}


def rules(variant: str) -> at.Rule:
    """The rule of a steered variant: on the generated frames' queries, the reference frame's keys."""
    transform = at.bias(-0.6) if variant == "dymos" else at.scale_if_positive(0.5)
    return at.Rule(at.frames.generated, at.frames.reference, transform)


def on_backend(model: torch.nn.Module, name: str) -> None:
    """Every attention processor of ``model`` on diffusers backend ``name`` (its own availability checks apply)."""
    model.set_attention_backend(name)


def variants(model: torch.nn.Module, kwargs: dict, backend: str, routes: dict[str, dict]) -> dict[str, Callable]:
    """Zero-argument functions, each running one forward and returning its seconds (sessions opened untimed);
    ``routes`` collects each steered variant's ``steered_calls_by_route``."""

    def forward() -> float:
        with torch.no_grad():
            return timed(lambda: model(**kwargs))

    def steered(variant: str) -> Callable[[], float]:
        def run() -> float:
            with at.steer(model, rules(variant), num_steps=1) as steering:
                seconds = forward()
            routes[variant] = steering.summary()["steered_calls_by_route"]
            return seconds
        return run

    def recorded() -> float:
        with at.inspect(model, num_steps=1):
            return forward()

    def on_native() -> float:
        on_backend(model, "native")
        try:
            return forward()
        finally:
            on_backend(model, backend)

    return {"plain": forward, "dymos": steered("dymos"), "score": steered("score"), "frame_maps": recorded,
            "native": on_native}


def measure(model: torch.nn.Module, kwargs: dict, shape: str, backend: str, rounds: int, warmup: int
            ) -> tuple[list[Row], dict[str, dict]]:
    """The rows of the table (each variant's time / the unsteered time on ``backend``, where ``model`` runs) and the
    steered variants' routes."""
    routes: dict[str, dict] = {}
    try:
        samples = interleaved(variants(model, kwargs, backend, routes), rounds, warmup)
    finally:
        on_backend(model, "native")
    plain = samples["plain"]
    rows = [Row(LABELS[v], shape, f"time / unsteered {backend}", [s / p for s, p in zip(samples[v], plain)], None)
            for v in VARIANTS]
    rows[0].note = f"  (unsteered {backend} {statistics.median(plain) * 1e3:.1f} ms)"
    return rows, routes


def main(backend: str, rounds: int, dry: bool) -> int:
    """Print the table for ``backend``; 2 where diffusers refuses the backend on this machine."""
    warnings.simplefilter("ignore")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "attention backends are experimental", at every switch to native
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rounds, warmup = (1, 0) if dry else (rounds, 2)
    started, load_before = time.perf_counter(), load()
    print(f"# steered / unsteered on diffusers backend {backend!r}{' (dry run)' if dry else ''} on {machine()}; "
          f"{cpu_model()}; {datetime.date.today().isoformat()}")
    model, kwargs, shape = large_transformer(dry, device)
    try:
        on_backend(model, backend)
    except (ValueError, RuntimeError, ImportError) as exc:  # diffusers: an unknown backend, or its package is missing
        print(f"# backend {backend!r} cannot run here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return 2
    rows, routes = measure(model, kwargs, shape, backend, rounds, warmup)
    print("| case | shape | measure | median | spread | bound | verdict |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(c.strip() for c in row.cells(not dry)) + " |")
    for variant in ("dymos", "score"):
        print(f"# {LABELS[variant]}: steered calls by route {routes.get(variant)}")
    print(f"# {time.perf_counter() - started:.0f} s; 1-minute load average {load_before} before, {load()} after")
    return 0
