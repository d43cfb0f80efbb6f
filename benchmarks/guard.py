"""Benchmark guard: the speed and memory promises of attnsteer, each ratio beside its bound.

Every ratio is measured side by side in one process: each round runs the baseline and its variants once,
in turn, and the ratio is taken round by round (variant / baseline of the same round); the table gives
the median of those ratios and their spread (min-max), the bound, and PASS or OVER. It is a benchmark, not
a test: its numbers are only trustworthy on a machine that runs nothing else (it prints the load average
before and after, and warns when the machine was busy).

What it measures (CPU, float32 unless named; ``--quick`` and ``--dry-run`` shrink it, see below):

- grouped rules (``attnsteer.kernels.grouped_attention``, no mass) against plain SDPA, bound 1.05x. A
  subset of heads {1, 8, 40} x tokens {4,096, 32,760} x head dim {64, 128} x key groups {2, 16, 64} x
  {float32, bfloat16}, chosen to fit the time: DyMoS's 2 key classes (frames 1.. get -0.6 on frame 0) at
  8 heads x 4,096 x 64 (float32 and bfloat16), 40 heads x 4,096 x 64 and 1 head x 32,760 (21 x 1560) x 64;
  16 and 64 key groups whose bias columns all differ (one fused call per group) at 1 head x 4,096 x 128,
  8 heads x 4,096 x 64 and (64 only) 1 head x 32,760 x 64; 8 heads x 4,096 x 128 in bfloat16 with 16 groups.
- frame maps (grouped kernel with the frame mass) and pixel maps (22 per-query maps onto every frame and
  the text) at Wan 480p: 21 frames x 1560 tokens + 226 text tokens, 4 heads, head dim 128 (the setups of
  ``benchmarks.heatmaps``): time / SDPA (bound 1.10x) and peak live tensor memory / SDPA's (bound 1.2x,
  from the profiler's allocation records, one call each round). Two rounds (each call takes ~15 s here).
- one steered step of the tiny Wan pipeline (``attnsteer.testing.tiny.build_tiny("tiny-wan")``, DyMoS on
  every step, one inference step per run, timed inside an open session) against the plain step, bound 1.10x;
  the session's enter and exit apart (informative). Both from ``benchmarks.percall``.
- one steered forward of the medium Wan config of ``benchmarks.compile`` (2 blocks, 8 heads x 64, 1536
  tokens; DyMoS's -0.6 on the reference frame), a session's second forward (the steady state of a run: its
  first builds the session's plans), against the plain forward, bound 1.02x (``benchmarks.percall``).
- the score path at 4,096 tokens (16 frames of 256), 12 heads, head dim 64 (``benchmarks.rules``; the chunk
  step compiles outside the timed rounds): the block decomposition's rules, FreeLong's local window of 3
  frames and a ``scale_if_positive`` boost inside a box (bound 1.3x), a bias beyond a token distance (2x);
  UltraViCo's ``scale_if_positive`` beyond a token distance (2x) and a user ``score_mod`` (informative); and
  compiled FlexAttention with the same rules as ``score_mod`` in the same rounds (informative; full mode only).

    python -m benchmarks.guard               # the full table: about 3 minutes on 2 quiet cores (estimated)
    python -m benchmarks.guard --quick       # smaller shapes (maps at 3 frames), fewer rounds: about a minute
    python -m benchmarks.guard --dry-run     # tiny shapes, one round each: proves the script runs (no verdicts)
    python -m benchmarks.guard --markdown    # the table as markdown (docs/performance.md)
    python -m benchmarks.guard --only grouped --only maps    # some sections (grouped, maps, tiny, medium, score)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from attnsteer.testing.profiling import peak_tensor_memory_mb
from benchmarks.common import machine, time_samples

GROUPED_BOUND, MAPS_TIME_BOUND, MAPS_MEMORY_BOUND = 1.05, 1.10, 1.2
TINY_BOUND, MEDIUM_BOUND, SCORE_BOUND, SCORE_WINDOW_BOUND = 1.10, 1.02, 2.0, 1.3


@dataclass
class Row:
    case: str
    shape: str
    measure: str
    ratios: list[float]
    bound: float | None
    note: str = ""

    def cells(self, judge: bool) -> list[str]:
        median = statistics.median(self.ratios)
        spread = f"{min(self.ratios):.3f}-{max(self.ratios):.3f}" if len(self.ratios) > 1 else "-"
        bound = "-" if self.bound is None else f"{self.bound:.2f}"
        if not judge:
            verdict = "dry"
        elif self.bound is None:
            verdict = "info"
        else:
            verdict = "PASS" if median <= self.bound else "OVER"
        return [self.case, self.shape, self.measure, f"{median:.3f}", spread, bound, verdict + self.note]


@dataclass
class Plan:
    """The sizes of one mode (full, quick, dry)."""

    grouped: list[tuple[str, dict, list[str], int, bool]]  # (shape label, config, methods, rounds, warm-up)
    maps_frames: int
    maps_heads: int
    maps_rounds: int
    pipeline_rounds: int
    medium_config: str
    score: dict
    score_rounds: int
    judge: bool = True
    flex: bool = True  # compiled FlexAttention beside the score path (about 30 s of compiling per rule on CPU)
    rows: list[Row] = field(default_factory=list)


def plans(mode: str) -> Plan:
    if mode == "dry":
        return Plan(
            grouped=[("1x1x256x16 float32", dict(heads=1, n=256, dim=16, dtype="float32"),
                      ["dymos", "groups:16"], 1, False)],
            maps_frames=1, maps_heads=1, maps_rounds=1, pipeline_rounds=1, medium_config="tiny",
            score=dict(n=1024, heads=1, dim=16), score_rounds=1, judge=False, flex=False,
        )
    if mode == "quick":
        return Plan(
            grouped=[
                ("1x8x4096x64 float32", dict(heads=8, n=4096, dim=64, dtype="float32"),
                 ["dymos", "groups:16", "groups:64"], 5, True),
                ("1x1x4096x128 float32", dict(heads=1, n=4096, dim=128, dtype="float32"),
                 ["dymos", "groups:16"], 7, True),
            ],
            maps_frames=3, maps_heads=4, maps_rounds=3, pipeline_rounds=5, medium_config="medium",
            score=dict(n=2048, heads=4, dim=64), score_rounds=3, flex=False,
        )
    return Plan(
        grouped=[
            ("1x1x4096x128 float32", dict(heads=1, n=4096, dim=128, dtype="float32"),
             ["dymos", "groups:16", "groups:64"], 9, True),
            ("1x8x4096x64 float32", dict(heads=8, n=4096, dim=64, dtype="float32"),
             ["dymos", "groups:16", "groups:64"], 7, True),
            ("1x8x4096x64 bfloat16", dict(heads=8, n=4096, dim=64, dtype="bfloat16"), ["dymos"], 5, True),
            ("1x8x4096x128 bfloat16", dict(heads=8, n=4096, dim=128, dtype="bfloat16"), ["groups:16"], 3, True),
            ("1x40x4096x64 float32", dict(heads=40, n=4096, dim=64, dtype="float32"), ["dymos"], 3, False),
            ("1x1x32760x64 float32", dict(heads=1, n=32760, dim=64, dtype="float32"), ["dymos", "groups:64"], 2,
             False),
        ],
        maps_frames=21, maps_heads=4, maps_rounds=2, pipeline_rounds=7, medium_config="medium",
        score=dict(n=4096, heads=12, dim=64), score_rounds=3,
    )


def _seconds(t: float) -> str:
    return f"{t:.1f} s" if t >= 1 else f"{t * 1e3:.0f} ms"


def ratios_to(samples: dict[str, list[float]], base: str) -> dict[str, list[float]]:
    """Each method's time over the baseline's, round by round."""
    return {name: [t / b for t, b in zip(s, samples[base])] for name, s in samples.items() if name != base}


# --- grouped rules ---------------------------------------------------------------------------------------

def grouped_methods(config: dict, methods: list[str], device: str) -> dict[str, Callable[[], object]]:
    from benchmarks import kernel, rules

    dtype = getattr(torch, config["dtype"])
    heads, n, dim = config["heads"], config["n"], config["dim"]
    fns = {"sdpa": rules.sdpa_case(heads, n, dim, device, dtype)}
    for method in methods:
        if method == "dymos":  # 8 key groups of n/8 tokens (21 of 1560 at Wan 480p): frames 1.. -0.6 on frame 0
            frames = 21 if n == 32760 else 8
            shape = dict(frames=frames, tokens=n // frames, heads=heads, dim=dim, dtype=config["dtype"])
            fns[method] = kernel.build("grouped_dymos", shape, device)
        else:
            groups = int(method.partition(":")[2])
            fns[method] = rules.grouped_case(groups, heads, 1, n, dim, device, dtype)
    return fns


def measure_grouped(plan: Plan, device: str, log: Callable[[str], None]) -> None:
    names = {"dymos": "grouped, DyMoS (2 key classes)", "groups:16": "grouped, 16 key groups",
             "groups:64": "grouped, 64 key groups"}
    for shape, config, methods, rounds, warmup in plan.grouped:
        log(f"grouped rules at {shape} ...")
        samples = time_samples(grouped_methods(config, methods, device), rounds, warmup)
        for method, ratios in ratios_to(samples, "sdpa").items():
            note = f"  (SDPA {_seconds(statistics.median(samples['sdpa']))})"
            plan.rows.append(Row(names[method], shape, "time / SDPA", ratios, GROUPED_BOUND, note))


# --- heatmaps --------------------------------------------------------------------------------------------

def measure_maps(plan: Plan, device: str, log: Callable[[str], None]) -> None:
    from benchmarks import heatmaps

    config = {"frames": plan.maps_frames, "heads": plan.maps_heads}
    tokens = heatmaps.layout_of(plan.maps_frames).seq_len
    shape = f"{plan.maps_frames}x1560+{heatmaps.TEXT}={tokens}, {plan.maps_heads}h, 128"
    log(f"frame and pixel maps at {shape} ...")
    methods = {name: heatmaps.build(name, config, device) for name in ("sdpa", "frame mass", "pixel maps")}
    times: dict[str, list[float]] = {name: [] for name in methods}
    peaks: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(plan.maps_rounds):  # each call once per round, under the allocation profiler
        for name, fn in methods.items():
            start = time.perf_counter()
            peaks[name].append(peak_tensor_memory_mb(fn, device))
            times[name].append(time.perf_counter() - start)
    labels = {"frame mass": "frame maps (frame mass)", "pixel maps": "pixel maps (22 maps)"}
    for name in ("frame mass", "pixel maps"):
        note = f"  (SDPA {_seconds(statistics.median(times['sdpa']))})"
        plan.rows.append(Row(labels[name], shape, "time / SDPA", ratios_to(times, "sdpa")[name], MAPS_TIME_BOUND,
                             note))
        plan.rows.append(Row(labels[name], shape, "live tensors / SDPA", ratios_to(peaks, "sdpa")[name],
                             MAPS_MEMORY_BOUND, f"  (SDPA {statistics.median(peaks['sdpa']):.0f} MB)"))


# --- pipeline steps --------------------------------------------------------------------------------------

def measure_tiny_pipeline(plan: Plan, device: str, log: Callable[[str], None]) -> None:
    """``benchmarks.percall``'s tiny-pipeline step: steered inside an open session (its steady state) / plain."""
    from benchmarks import percall

    log("tiny Wan pipeline step ...")
    rows = percall.measure_tiny(plan.pipeline_rounds, 2 if plan.judge else 0)
    plan.rows.extend(row if row.bound is None else dataclasses.replace(row, bound=TINY_BOUND) for row in rows)


def measure_medium_step(plan: Plan, device: str, log: Callable[[str], None]) -> None:
    """``benchmarks.percall``'s forward rows on the medium Wan config of ``benchmarks.compile``: a session's second
    forward (its steady state; the first builds the session's plans) / the plain forward."""
    from benchmarks import compile as compile_bench
    from benchmarks import percall

    log(f"{plan.medium_config} Wan forward ...")
    model, kwargs, _ = compile_bench.build(plan.medium_config, device)
    kwargs = {**kwargs, "timestep": torch.tensor([500.0], device=device)}
    shape = "2 blocks, 8x64, 1536 tokens" if plan.medium_config == "medium" else "tiny transformer"
    plan.rows.extend(percall.forward_rows(
        f"steered {plan.medium_config} Wan step (DyMoS)", shape, model, model, model, kwargs, plan.pipeline_rounds,
        2 if plan.judge else 0, MEDIUM_BOUND if plan.medium_config == "medium" else None))


# --- score path ------------------------------------------------------------------------------------------

def measure_score(plan: Plan, device: str, log: Callable[[str], None]) -> None:
    from benchmarks import rules

    config = plan.score
    shape = f"1x{config['heads']}x{config['n']}x{config['dim']} float32"
    log(f"score path at {shape} (compiles once) ...")
    methods = {"sdpa": rules.build("sdpa", config, device)}
    methods.update({rule: rules.build(f"score:{rule}", config, device) for rule in rules.SCORE_RULES})
    methods.update({rule: rules.build(f"score:{rule}", config, device) for rule in rules.BLOCK_RULES})
    notes = {}
    if plan.flex:  # compiled FlexAttention with the same rules, beside them in the same rounds (informative)
        cases = {f"flex {rule}": (rules.flex_block_case, rule) for rule in rules.BLOCK_RULES}
        cases["flex scale_if_positive"] = (lambda _, *a: rules.flex_case(*a), None)
        for name, (make, rule) in cases.items():
            try:
                methods[name] = make(rule, config["heads"], config["n"], config["dim"], device)
            except Exception as exc:  # report and go on: FlexAttention may not compile on this machine
                notes[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    samples = time_samples(methods, plan.score_rounds, warmup=True)  # the warm-up round compiles
    ratios = ratios_to(samples, "sdpa")
    labels = [
        ("frame_window", "score path, frame-window rule", SCORE_WINDOW_BOUND),
        ("box", "score path, box rule", SCORE_WINDOW_BOUND),
        ("token_distance", "score path, token-distance bias", SCORE_BOUND),
        ("scale_if_positive", "score path, token-distance rule", SCORE_BOUND),
        ("score_mod", "score path, user score_mod", None),
    ]
    for name, label, bound in labels:
        plan.rows.append(Row(label, shape, "time / SDPA", ratios[name], bound))
    for rule in [*rules.BLOCK_RULES, "scale_if_positive"]:
        label = f"compiled FlexAttention, {rule.replace('_', '-')}"
        if f"flex {rule}" in ratios:
            plan.rows.append(Row(label, shape, "time / SDPA", ratios[f"flex {rule}"], None))
        elif f"flex {rule}" in notes:
            log(f"{label} skipped: {notes[f'flex {rule}']}")


# --- report ----------------------------------------------------------------------------------------------

HEADER = ["case", "shape", "measure", "median", "spread", "bound", "verdict"]
WIDTHS = [32, 34, 19, 7, 13, 5, 8]


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def report(plan: Plan, markdown: bool, started: float, load_before: str) -> None:
    judged = [r for r in plan.rows if plan.judge and r.bound is not None]
    over = [r for r in judged if statistics.median(r.ratios) > r.bound]
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for row in plan.rows:
            print("| " + " | ".join(c.strip() for c in row.cells(plan.judge)) + " |")
    else:
        print(_line(HEADER))
        for row in plan.rows:
            print(_line(row.cells(plan.judge)))
    load_after = load()
    print(f"# {len(judged) - len(over)} of {len(judged)} bounds met; {time.perf_counter() - started:.0f} s; "
          f"1-minute load average {load_before} before, {load_after} after")
    loads = [float(x) for x in (load_before, load_after) if x != "?"]
    if loads and max(loads) > torch.get_num_threads() + 0.5:
        print("# WARNING: the machine was busy (load above the thread count): these ratios are unreliable")


def _line(cells: list[str]) -> str:
    parts = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells[:6], WIDTHS))]
    return "  ".join(parts) + "  " + cells[6]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer rounds (about a minute)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, one round: check that it runs")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadier on a shared machine)")
    parser.add_argument("--only", choices=("grouped", "maps", "tiny", "medium", "score"), action="append",
                        help="run only these sections (repeatable)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = plans("dry" if args.dry_run else "quick" if args.quick else "full")
    started, load_before = time.perf_counter(), load()
    print(f"# attnsteer benchmark guard ({'dry run' if args.dry_run else 'quick' if args.quick else 'full'}) on "
          f"{machine()}; {cpu_model()}; {datetime.date.today().isoformat()}")
    print(f"# python -m benchmarks.guard {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())

    def log(message: str) -> None:
        print(f"#   {time.perf_counter() - started:5.0f} s  {message}", file=sys.stderr, flush=True)

    sections = {"grouped": measure_grouped, "maps": measure_maps, "tiny": measure_tiny_pipeline,
                "medium": measure_medium_step, "score": measure_score}
    for name, measure in sections.items():
        if not args.only or name in args.only:
            measure(plan, device, log)
    report(plan, args.markdown, started, load_before)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
