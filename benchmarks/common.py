"""Shared benchmark helpers: interleaved timing with medians, and peak memory in a fresh process.

These machines are noisy: every method is timed in the same run, round-robin, and reported as a
ratio to the baseline method. Peak memory is measured by running each method once in its own
subprocess and reading the growth of its peak resident set size (VmHWM, CPU) or the CUDA allocator's
peak (GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from attnsteer.testing.profiling import peak_memory_growth_mb, peak_tensor_memory_mb


def time_interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per method; each round runs every method once, in turn (after one warm-up round)."""
    return {name: statistics.median(s) for name, s in time_samples(methods, repeats).items()}


def time_samples(methods: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of every run of every method: ``repeats`` rounds, each running every method once, in turn
    (after one untimed warm-up round unless ``warmup`` is False). Sample i of every method comes from round i,
    so ratios can be taken round by round."""
    if warmup:
        for fn in methods.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            samples[name].append(timed(fn))
    return samples


def timed(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after where it is a GPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory(module: str, method: str, config: dict) -> dict[str, float] | None:
    """Run ``python -m MODULE --measure METHOD --config JSON`` in a fresh interpreter and return its peak
    growths in MB: "rss" (the resident set, CPU) and "tensors" (live tensor bytes); None if it failed."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--measure", method, "--config", json.dumps(config)],
        capture_output=True, text=True, timeout=1800,
    )
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_memory_mb(module: str, method: str, config: dict) -> float | None:
    """The resident-set growth of :func:`peak_memory` (None if the measurement failed)."""
    peaks = peak_memory(module, method, config)
    return None if peaks is None else peaks["rss"]


def measure_in_this_process(setup: Callable[[], Callable[[], object]]) -> str:
    """Peak memory growth (MB) of one call of the function that ``setup`` returns, beyond the setup itself,
    as JSON: the resident set of the first call (fresh process) and the live tensors of a second."""
    fn = setup()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rss = peak_memory_growth_mb(fn, device)
    return json.dumps({"rss": rss, "tensors": peak_tensor_memory_mb(fn, device)})


def benchmark_arguments(doc: str, module: str, build: Callable[[str, dict, str], Callable[[], object]],
                        repeats: int, flex: bool = True,
                        extra: Callable[[argparse.ArgumentParser], None] | None = None,
                        ) -> tuple[argparse.Namespace, str] | None:
    """The shared command line of the benchmarks (``--quick``, ``--repeats``, ``--no-flex``) and the
    ``--measure`` mode that :func:`peak_memory_mb` runs in a fresh process (then it prints and returns None)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=repeats)
    if flex:
        parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile takes ~30 s on CPU)")
    if extra is not None:
        extra(parser)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.measure:
        print(measure_in_this_process(lambda: build(args.measure, json.loads(args.config), device)))
        return None
    return args, device


def format_row(cells: list[object], widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def machine() -> str:
    import os
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"
