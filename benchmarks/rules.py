"""Benchmark: the rule language's two exact paths against plain SDPA, side by side in one run.

1. Group-constant rules (the grouped path) at Wan 480p sequence length (21 x 1560 tokens, head
   dim 128; one head on CPU, 12 on a GPU) with 2, 16 and 64 key groups whose bias columns all
   differ, so the kernel makes one fused call per group: time / plain SDPA.
2. Score functions (the chunked score path; UltraViCo's sign-conditional rule and a
   FlexAttention-style user score_mod) at 4,096 tokens, 12 heads: time / plain SDPA, compiled
   FlexAttention beside them where it compiles, and peak memory of the eager score path at 2k, 4k
   and 8k tokens (linear in tokens: it holds chunk x N logits, never N x N).

    python -m benchmarks.rules            # the full table (about 5 minutes on 2 CPU cores)
    python -m benchmarks.rules --quick    # smaller sizes, for a smoke run
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import attnsteer as at
from attnsteer.runtime.execute import _score_fn, run_plan
from attnsteer.kernels import grouped_attention, scored_attention
from attnsteer.runtime.plan import build_plan
from attnsteer.language.selectors import SelectionContext
from benchmarks.common import benchmark_arguments, format_row, machine, peak_memory_mb, time_interleaved

WAN_480P = dict(frames=21, tokens=1560, dim=128)
SCORE_RULES = {
    # the token-distance radius is a quarter of the call (1024 at 4,096 tokens), so that every size has far pairs
    "scale_if_positive": lambda n: at.Rule(at.video, at.video, at.scale_if_positive(0.9),
                                           pairs=at.token_distance(max(1, n // 4))),
    "score_mod": lambda n: at.Rule(at.video, at.video, at.score_mod(lambda s, b, h, q, k: s - 0.01 * (q - k).abs(), "dist")),
}
# Piecewise-constant rules that the block decomposition serves (runtime/block_plan.py), on the layout of
# ``score_case`` (frames of 256 tokens, a 16 x 16 grid): FreeLong's local window of 3 frames (block outside it),
# a sign-conditional boost inside a box (a quarter of the frame's width and height), a far-pair bias.
BLOCK_RULES = {
    "frame_window": lambda n: at.Rule(at.video, at.video, at.block(), pairs=~at.frame_window(3)),
    "box": lambda n: at.Rule(at.box(0, 0, 0.25, 0.25), at.box(0, 0, 0.25, 0.25), at.scale_if_positive(1.5)),
    "token_distance": lambda n: at.Rule(at.video, at.video, at.bias(-1.0), pairs=at.token_distance(max(1, n // 4))),
}


def qkv(heads: int, n: int, dim: int, device: str, dtype: torch.dtype | None = None):
    g = torch.Generator().manual_seed(0)
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    return [torch.randn(1, heads, n, dim, generator=g).to(device, dtype) for _ in range(3)]


def grouped_case(groups: int, heads: int, frames: int, tokens: int, dim: int, device: str,
                 dtype: torch.dtype | None = None):
    """grouped_attention with ``groups`` contiguous key groups and a bias whose columns all differ."""
    q, k, v = qkv(heads, frames * tokens, dim, device, dtype)
    ids = torch.arange(frames * tokens, device=device) * groups // (frames * tokens)
    bias = torch.randn(groups, groups, generator=torch.Generator().manual_seed(1)).to(device)
    return lambda: grouped_attention(q, k, v, ids, ids, bias=bias)


def score_case(rule: str, heads: int, n: int, dim: int, device: str, eager: bool = False):
    """One call of the score path for ``rule`` on a video-only layout of ``n`` tokens (``eager``: the
    chunk step not compiled, for memory: compiling itself takes memory once)."""
    q, k, v = qkv(heads, n, dim, device)
    layout = at.TokenLayout(num_frames=n // 256, tokens_per_frame=256, grid=(16, 16))
    ctx = SelectionContext(layout)
    plan = build_plan((({**SCORE_RULES, **BLOCK_RULES}[rule](n), ctx),), layout, None, 1, heads)
    assert plan.path in ("scored", "grouped")  # the frame window is grouped (its block path skips the blocked blocks)
    if eager:
        fn = _score_fn(plan.scored, 1, heads, n, torch.device(device))
        return lambda: scored_attention(q, k, v, fn, compile=False)
    return lambda: run_plan(plan, q, k, v, layout, None, None, want_mass=False)


def flex_case(heads: int, n: int, dim: int, device: str):
    """Compiled FlexAttention with the same sign-conditional rule, for comparison."""
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = qkv(heads, n, dim, device)
    alpha = torch.tensor(0.9, device=device)

    def score_mod(score, b, h, q_idx, kv_idx):
        far = (q_idx - kv_idx).abs() > 1024
        return torch.where(far & (score > 0), score * alpha, score)

    compiled = torch.compile(flex_attention, dynamic=False)
    fn = lambda: compiled(q, k, v, score_mod=score_mod)  # noqa: E731
    fn()  # compile outside the timed rounds
    return fn


def flex_block_case(rule: str, heads: int, n: int, dim: int, device: str):
    """Compiled FlexAttention with a ``score_mod`` equal to ``BLOCK_RULES[rule]`` on ``score_case``'s layout."""
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = qkv(heads, n, dim, device)
    neg, one, boost = (torch.tensor(x, device=device) for x in (float("-inf"), 1.0, 1.5))  # no Python floats (inductor)
    radius = max(1, n // 4)

    def in_box(idx):
        return ((idx % 256) // 16 < 4) & (idx % 16 < 4)

    mods = {
        "frame_window": lambda score, b, h, q_idx, kv_idx: torch.where((q_idx // 256 - kv_idx // 256).abs() > 1, neg,
                                                                       score),
        "box": lambda score, b, h, q_idx, kv_idx: torch.where(in_box(q_idx) & in_box(kv_idx) & (score > 0),
                                                              score * boost, score),
        "token_distance": lambda score, b, h, q_idx, kv_idx: torch.where((q_idx - kv_idx).abs() > radius, score - one,
                                                                         score),
    }
    compiled = torch.compile(flex_attention, dynamic=False)
    fn = lambda: compiled(q, k, v, score_mod=mods[rule])  # noqa: E731
    fn()  # compile outside the timed rounds
    return fn


def sdpa_case(heads: int, n: int, dim: int, device: str, dtype: torch.dtype | None = None):
    q, k, v = qkv(heads, n, dim, device, dtype)
    return lambda: F.scaled_dot_product_attention(q, k, v)


def build(method: str, config: dict, device: str):
    kind, _, arg = method.partition(":")
    if kind == "sdpa":
        return sdpa_case(config["heads"], config["n"], config["dim"], device)
    if kind == "grouped":
        return grouped_case(int(arg), config["heads"], config["frames"], config["tokens"], config["dim"], device)
    if kind in ("score", "score-eager"):
        return score_case(arg, config["heads"], config["n"], config["dim"], device, eager=kind == "score-eager")
    raise ValueError(f"unknown method {method!r}")


def main() -> None:
    parsed = benchmark_arguments(__doc__, "benchmarks.rules", build, repeats=3)
    if parsed is None:
        return
    args, device = parsed
    print(f"# rule-language benchmark on {machine()}")
    widths = [26, 22, 10]

    frames = 4 if args.quick else WAN_480P["frames"]
    grouped = dict(WAN_480P, frames=frames, heads=12 if device == "cuda" else 1)
    grouped["n"] = grouped["frames"] * grouped["tokens"]
    print("\n## group-constant rules (grouped path)")
    print(format_row(["method", "tokens, heads, dim", "time/SDPA"], widths))
    methods = {"sdpa": build("sdpa", grouped, device)}
    methods.update({f"grouped:{g}": build(f"grouped:{g}", grouped, device) for g in (2, 16, 64)})
    times = time_interleaved(methods, repeats=args.repeats)
    shape = f"{grouped['n']}, {grouped['heads']}, {grouped['dim']}"
    for name, t in times.items():
        note = f"  ({t:.2f} s)" if name == "sdpa" else ""
        print(format_row([name.replace("grouped:", "grouped, groups="), shape, f"{t / times['sdpa']:.3f}"], widths) + note)

    score = dict(n=2048 if args.quick else 4096, heads=12, dim=64)
    print("\n## score functions (scored path)")
    print(format_row(["method", "tokens, heads, dim", "time/SDPA"], widths))
    methods = {"sdpa": build("sdpa", score, device)}
    methods.update({f"score:{r}": build(f"score:{r}", score, device) for r in SCORE_RULES})
    if not args.no_flex:
        try:
            methods["flex_attention"] = flex_case(score["heads"], score["n"], score["dim"], device)
        except Exception as exc:  # report and go on: FlexAttention may not compile on this machine
            print(f"flex_attention skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
    times = time_interleaved(methods, repeats=args.repeats)
    shape = f"{score['n']}, {score['heads']}, {score['dim']}"
    for name, t in times.items():
        note = f"  ({t * 1e3:.0f} ms)" if name == "sdpa" else ""
        print(format_row([name.replace("score:", "score, "), shape, f"{t / times['sdpa']:.3f}"], widths) + note)

    print("\n## peak memory of one call (MB, fresh process)")
    print(format_row(["method", "tokens", "peak MB"], widths))
    for n in ((1024, 2048) if args.quick else (2048, 4096, 8192)):
        config = dict(score, n=n)
        for method in ("sdpa", "score-eager:scale_if_positive"):
            peak = peak_memory_mb("benchmarks.rules", method, config)
            print(format_row([method.replace("score-eager:", "score (eager), "), n, "?" if peak is None else f"{peak:.0f}"],
                             widths))


if __name__ == "__main__":
    main()
