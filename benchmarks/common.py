"""Shared benchmark helpers: interleaved timing with medians, and peak memory in a fresh process.

These machines are noisy: every method is timed in the same run, round-robin, and reported as a
ratio to the baseline method. Peak memory is measured by running each method once in its own
subprocess and reading the growth of its peak resident set size (VmHWM, CPU) or the CUDA allocator's
peak (GPU).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from attnsteer.profiling import peak_memory_growth_mb


def time_interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per method; each round runs every method once, in turn (after one warm-up round)."""
    for fn in methods.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_memory_mb(module: str, method: str, config: dict) -> float | None:
    """Run ``python -m MODULE --measure METHOD --config JSON`` in a fresh interpreter; it prints its peak growth in MB."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--measure", method, "--config", json.dumps(config)],
        capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0:
        return None
    return float(result.stdout.strip().splitlines()[-1])


def measure_in_this_process(setup: Callable[[], Callable[[], object]]) -> float:
    """Peak memory growth (MB) of one call of the function that ``setup`` returns, beyond the setup itself."""
    fn = setup()
    return peak_memory_growth_mb(fn, "cuda" if torch.cuda.is_available() else "cpu")


def format_row(cells: list[object], widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def machine() -> str:
    import os
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"
