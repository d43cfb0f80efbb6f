"""Benchmark: DyMoS steering with grouped_attention against plain SDPA and the usual alternatives.

Prints, side by side in one run, at Wan-like shapes: plain SDPA (baseline), grouped_attention with
DyMoS groups (2 fused calls), grouped_attention with the frame mass (one call per frame), SDPA with
a dense additive mask (the DyMoS authors' fallback) and compiled FlexAttention with a score_mod
(the authors' main path). Time is the median ratio to plain SDPA; memory the peak growth of one
call in a fresh process.

    python -m benchmarks.kernel            # full table (a few minutes on 2 CPU cores)
    python -m benchmarks.kernel --quick    # one small shape
    python -m benchmarks.kernel --backend flex    # steered / unsteered on one diffusers backend (benchmarks.backend)
    python -m benchmarks.kernel --backend native --dry-run

On a CUDA machine the inputs are bfloat16 and the shapes are Wan's full video sizes.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from attnsteer.kernels import grouped_attention
from benchmarks.common import benchmark_arguments, format_row, machine, peak_memory_mb, time_interleaved

GAMMA = 0.6
METHODS = ("sdpa", "grouped_dymos", "grouped_mass", "sdpa_dense_mask", "flex_score_mod")
FULL = [dict(frames=3, tokens=1560, heads=8, dim=64), dict(frames=5, tokens=1560, heads=8, dim=64),
        dict(frames=4, tokens=1560, heads=8, dim=128)]
QUICK = [dict(frames=3, tokens=1024, heads=8, dim=64)]
# On a GPU, full Wan sizes in bfloat16: 2.1-1.3B at 480p, 14B at 480p and at 720p (21 latent frames).
GPU_FULL = [dict(frames=21, tokens=1560, heads=12, dim=128), dict(frames=21, tokens=1560, heads=40, dim=128),
            dict(frames=21, tokens=3600, heads=40, dim=128)]


def make_inputs(frames: int, tokens: int, heads: int, dim: int, device: str = "cpu", dtype: str | None = None):
    g = torch.Generator().manual_seed(0)
    n = frames * tokens
    dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g).to(device, dtype) for _ in range(3))
    groups = torch.arange(frames, device=device).repeat_interleave(tokens)
    return q, k, v, groups


def build(method: str, config: dict, device: str):
    """A zero-argument function that runs ``method`` once on the config's inputs."""
    q, k, v, groups = make_inputs(device=device, **config)
    frames, tokens = config["frames"], config["tokens"]
    bias = torch.zeros(frames, frames, device=device)
    bias[1:, 0] = -GAMMA
    if method == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if method == "grouped_dymos":
        return lambda: grouped_attention(q, k, v, groups, groups, bias=bias)
    if method == "grouped_mass":
        return lambda: grouped_attention(q, k, v, groups, groups, bias=bias, return_mass=True)
    if method == "sdpa_dense_mask":  # the authors' fallback builds an N x N additive mask per call
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias[groups][:, groups].to(q.dtype))
    if method == "flex_score_mod":
        from torch.nn.attention.flex_attention import flex_attention

        gamma = torch.tensor(GAMMA, device=device)  # a Python float in score_mod crashes CPU inductor

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where((q_idx >= tokens) & (kv_idx < tokens), score - gamma, score)

        compiled = torch.compile(flex_attention, dynamic=False)
        return lambda: compiled(q, k, v, score_mod=score_mod)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def backend_options(parser) -> None:
    parser.add_argument("--backend", help="instead of the kernel table: steered / unsteered Wan forwards with their "
                        "attention on this diffusers backend (native, _native_math, flex on CPU; flash, sage, ... "
                        "where installed), side by side; see benchmarks/backend.py")
    parser.add_argument("--dry-run", action="store_true", help="with --backend: tiny sizes, one round")


def main() -> None:
    parsed = benchmark_arguments(__doc__, "benchmarks.kernel", build, repeats=5, extra=backend_options)
    if parsed is None:
        return
    args, device = parsed
    if args.backend:
        from benchmarks import backend

        sys.exit(backend.main(args.backend, args.repeats, args.dry_run))

    print(f"# grouped_attention benchmark on {machine()}")
    widths = [22, 16, 10, 10]
    print(format_row(["method", "shape F x T, H, D", "time/SDPA", "peak MB"], widths))
    full = GPU_FULL if device == "cuda" else FULL
    for config in QUICK if args.quick else full:
        methods = [m for m in METHODS if not (args.no_flex and m == "flex_score_mod")]
        fns, notes = {}, {}
        for m in methods:
            try:
                fns[m] = build(m, config, device)
                if m == "flex_score_mod":
                    fns[m]()  # compile outside the timed rounds
            except Exception as exc:  # report and go on: FlexAttention may not compile on this machine
                notes[m] = f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
        times = time_interleaved(fns, repeats=args.repeats)
        shape = f"{config['frames']}x{config['tokens']}, {config['heads']}, {config['dim']}"
        for m in methods:
            if m in notes:
                print(format_row([m, shape, "-", "-"], widths) + f"  ({notes[m]})")
                continue
            peak = peak_memory_mb("benchmarks.kernel", m, config)
            peak_text = "?" if peak is None else f"{peak:.0f}"
            print(format_row([m, shape, f"{times[m] / times['sdpa']:.3f}", peak_text], widths)
                  + ("" if m != "sdpa" else f"  ({times[m] * 1e3:.0f} ms)"))


if __name__ == "__main__":
    main()
