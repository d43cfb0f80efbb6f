"""Peak-memory measurement of one call, for benchmarks and memory tests (Linux CPU, or CUDA)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def peak_memory_growth_mb(fn: Callable[[], object], device: str = "cpu") -> float:
    """How far one call of ``fn`` raises peak memory above what was in use before it, in MB.

    CPU: the process's peak resident set size (``VmHWM``; writing 5 to ``/proc/self/clear_refs``
    resets it to the current RSS first). CUDA: the caching allocator's peak.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmHWM")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (peak memory is measured on Linux only)")
