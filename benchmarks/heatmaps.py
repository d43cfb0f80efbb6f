"""Benchmark: spatial attention maps against plain attention and against dense capture.

One self-attention call of a joint layout at Wan 480p size: 21 latent frames x 1560 tokens
(30 x 52 grid) plus 226 text tokens (CogVideoX's text length), head dim 128. Side by side in one
run, as ratios to plain SDPA (medians of interleaved repeats) and peak memory growth of one call
in a fresh process:

- ``frame mass``: the frame-level recording that exists already (grouped kernel, return_mass);
- ``pixel maps``: per-query mass onto every frame and onto the text (22 maps), plus the frame mass;
- ``region map``: one box of frame 10 (a fifth of the frame) -> every key, plus the frame mass;
- ``received``: the whole video's mean attention on every key, plus the frame mass;
- ``dense capture``: softmax(Q K^T) materialised and reduced to the same maps, where it fits.

    python -m benchmarks.heatmaps                 # 1 head on CPU (12 on a GPU); 21 frames, then 3 with dense capture
    python -m benchmarks.heatmaps --heads 12      # the full 12 heads (about 2 minutes per SDPA call on 2 cores)
    python -m benchmarks.heatmaps --quick         # 3 and 2 frames, a smoke run
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import attnsteer as at
from attnsteer.kernels import grouped_attention
from attnsteer.runtime.call_maps import run_with_maps
from attnsteer.runtime.plan import CallPlan
from attnsteer.language.selectors import SelectionContext
from benchmarks.common import benchmark_arguments, format_row, machine, peak_memory, time_interleaved

GRID, TEXT, DIM = (30, 52), 226, 128
DENSE_LIMIT_GB = 40.0 if torch.cuda.is_available() else 6.0
METHODS = ("sdpa", "frame mass", "pixel maps", "region map", "received", "dense capture")
PLAIN = CallPlan("plain", ())


def layout_of(frames: int) -> at.TokenLayout:
    return at.TokenLayout(num_frames=frames, tokens_per_frame=GRID[0] * GRID[1], video_start=TEXT,
                          segments=[at.Segment("text", 0, TEXT)], grid=GRID)


def sets(layout: at.TokenLayout) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(key sets of the pixel maps: every frame and the text, the region's query set, the video)."""
    ctx = SelectionContext(layout)
    keys = [at.frames[f].token_mask(ctx) for f in range(layout.num_frames)] + [at.text.token_mask(ctx)]
    region = at.maps.region(at.box(0.3, 0.3, 0.7, 0.8), frame=layout.num_frames // 2).selector.token_mask(ctx)
    return keys, [region], [at.video.token_mask(ctx)]


def build(method: str, config: dict, device: str):
    frames, heads = config["frames"], config["heads"]
    layout = layout_of(frames)
    n = layout.seq_len
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = (torch.randn(1, heads, n, DIM, generator=g).to(device, dtype) for _ in range(3))
    keys, region, video = sets(layout)
    groups = layout.group_ids(device)
    if method == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if method == "frame mass":
        return lambda: grouped_attention(q, k, v, groups, groups, return_mass=True)
    if method == "pixel maps":
        return lambda: run_with_maps(PLAIN, q, k, v, layout, None, None, keys, [])
    if method == "region map":
        return lambda: run_with_maps(PLAIN, q, k, v, layout, None, None, [], region)
    if method == "received":
        return lambda: run_with_maps(PLAIN, q, k, v, layout, None, None, [], video)
    if method == "dense capture":
        onehot = torch.stack(keys, -1).to(device, torch.float32)
        rows = region[0].to(device)

        def dense():
            p = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * DIM**-0.5, dim=-1)  # [1, H, N, N]
            return p @ v.float(), (p @ onehot).mean(1), p[:, :, rows].mean((1, 2))
        return dense
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def dense_gb(frames: int, heads: int) -> float:
    n = layout_of(frames).seq_len
    return 2 * heads * n * n * 4 / 2**30  # logits and probabilities


def main() -> None:
    parsed = benchmark_arguments(__doc__, "benchmarks.heatmaps", build, repeats=3, flex=False, extra=lambda p: p.add_argument(
        "--heads", type=int, help="attention heads (default: 1 on CPU, 12 on a GPU)"))
    if parsed is None:
        return
    args, device = parsed
    heads = args.heads or (12 if device == "cuda" else 1)
    print(f"# spatial heatmap benchmark on {machine()}; {heads} heads, head dim {DIM}, {GRID[0]}x{GRID[1]} tokens "
          f"per frame + {TEXT} text tokens")
    print("# memory: peak growth of one call beyond its inputs, as live tensors (what a GPU's allocator counts) "
          "and as the CPU resident set (glibc's heap slack included), each against plain SDPA's")
    widths = [14, 7, 7, 10, 8, 10, 8, 9, 8]
    print(format_row(["method", "frames", "tokens", "time/SDPA", "target", "tensor MB", "/SDPA", "RSS MB", "/SDPA"],
                     widths))
    for frames in (3, 2) if args.quick else (21, 3):
        layout = layout_of(frames)
        selected = int(sets(layout)[1][0].sum())
        targets = {"pixel maps": "1.10", "region map": f"{1 + selected / layout.seq_len + 0.05:.3f}", "received": "2.20"}
        methods = [m for m in METHODS if m != "dense capture" or dense_gb(frames, heads) <= DENSE_LIMIT_GB]
        config = {"frames": frames, "heads": heads}
        times = time_interleaved({m: build(m, config, device) for m in methods}, repeats=args.repeats)
        peaks = {m: peak_memory("benchmarks.heatmaps", m, config) for m in methods}
        for m in METHODS:
            if m not in methods:
                print(format_row([m, frames, layout.seq_len, "-", "-", "-", "-", "-", "-"], widths)
                      + f"  (skipped: needs {dense_gb(frames, heads):.1f} GB for the N x N matrices)")
                continue
            memory = [cell for kind in ("tensors", "rss") for cell in _against(peaks[m], peaks["sdpa"], kind)]
            note = f"  ({times[m]:.2f} s)" if m == "sdpa" else ""
            print(format_row([m, frames, layout.seq_len, f"{times[m] / times['sdpa']:.3f}", targets.get(m, ""), *memory],
                             widths) + note)


def _against(peak: dict | None, base: dict | None, kind: str) -> list[str]:
    """[peak MB, ratio to the baseline] of one kind, "?" where unknown."""
    if peak is None:
        return ["?", "?"]
    ratio = "?" if base is None or not base[kind] else f"{peak[kind] / base[kind]:.2f}"
    return [f"{peak[kind]:.0f}", ratio]


if __name__ == "__main__":
    main()
