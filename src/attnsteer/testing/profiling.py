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


def peak_tensor_memory_mb(fn: Callable[[], object], device: str = "cpu") -> float:
    """How far one call of ``fn`` raises the bytes held by live tensors, in MB: the allocator-independent
    peak (CPU: from the profiler's allocation records; CUDA: the caching allocator's peak, as above).

    On CPU the resident set can grow further than this: glibc keeps freed blocks of its heap
    resident, so many short-lived buffers of one size may leave slack that ``VmHWM`` counts."""
    if device.startswith("cuda"):
        return peak_memory_growth_mb(fn, device)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    live = peak = 0
    for record in records:
        live += record.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak / 2**20
