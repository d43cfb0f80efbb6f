"""Benchmark: recording frame-level attention mass, against plain attention and against the usual
approach of materialising softmax(Q K^T) and summing it per frame.

Side by side in one run, at growing sequence lengths (latent frames x 1560 tokens, Wan 480p
frames): time as the median ratio to plain SDPA, peak memory growth of one call in a fresh
process. The dense approach is skipped where its N x N matrix would not fit comfortably.

    python -m benchmarks.inspect            # 3, 6, 12, 21 frames (several minutes on 2 CPU cores)
    python -m benchmarks.inspect --quick    # 3 and 6 frames
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from attnsteer.kernels import grouped_attention
from benchmarks.common import format_row, machine, measure_in_this_process, peak_memory_mb, time_interleaved

TOKENS, HEADS, DIM = 1560, 2, 64
DENSE_LIMIT_GB = 40.0 if torch.cuda.is_available() else 6.0
METHODS = ("sdpa", "capture", "dense_softmax")


def build(method: str, frames: int):
    g = torch.Generator().manual_seed(0)
    n = frames * TOKENS
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    q, k, v = (torch.randn(1, HEADS, n, DIM, generator=g).to(device, dtype) for _ in range(3))
    groups = torch.arange(frames, device=device).repeat_interleave(TOKENS)
    if method == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if method == "capture":
        return lambda: grouped_attention(q, k, v, groups, groups, return_mass=True)
    if method == "dense_softmax":
        def dense():
            p = torch.softmax(q @ k.transpose(-1, -2) * DIM**-0.5, dim=-1)  # [1, H, N, N]
            per_key_frame = p.view(1, HEADS, n, frames, TOKENS).sum(-1)
            mass = per_key_frame.view(1, HEADS, frames, TOKENS, frames).mean(-2)
            return p @ v, mass
        return dense
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def dense_gb(frames: int) -> float:
    n = frames * TOKENS
    return 2 * HEADS * n * n * 4 / 2**30  # logits and probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(measure_in_this_process(lambda: build(args.measure, json.loads(args.config)["frames"])))
        return

    print(f"# frame-mass capture benchmark on {machine()}; {HEADS} heads, head dim {DIM}, {TOKENS} tokens/frame")
    widths = [14, 8, 8, 10, 10]
    print(format_row(["method", "frames", "tokens", "time/SDPA", "peak MB"], widths))
    for frames in (3, 6) if args.quick else (3, 6, 12, 21):
        methods = [m for m in METHODS if m != "dense_softmax" or dense_gb(frames) <= DENSE_LIMIT_GB]
        times = time_interleaved({m: build(m, frames) for m in methods}, repeats=args.repeats)
        for m in METHODS:
            if m not in methods:
                print(format_row([m, frames, frames * TOKENS, "-", "-"], widths)
                      + f"  (skipped: needs {dense_gb(frames):.1f} GB for the N x N matrices)")
                continue
            peak = peak_memory_mb("benchmarks.inspect", m, {"frames": frames})
            note = f"  ({times[m] * 1e3:.0f} ms)" if m == "sdpa" else ""
            print(format_row([m, frames, frames * TOKENS, f"{times[m] / times['sdpa']:.3f}",
                              "?" if peak is None else f"{peak:.0f}"], widths) + note)


if __name__ == "__main__":
    main()
