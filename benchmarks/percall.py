"""Per-call overhead of steering (issue 23 §2): three ratios, each beside its bound, measured side by side in one
process (every round runs the plain and the steered variant once, in turn; the ratio is taken round by round and the
table gives the median and the spread, as ``benchmarks.guard`` does):

- a steered step of the tiny Wan I2V pipeline (``build_tiny("tiny-wan")``, DyMoS at every step, guidance on) / the
  plain step, bound 1.10x;
- a steered forward at 9,216 tokens (a Wan transformer of 2 blocks, 4 heads x 64, 4 latent frames x 48 x 48 tokens,
  random weights; DyMoS's -0.6 from frames 1.. onto frame 0) / the plain forward, bound 1.02x;
- a steered compiled forward of the tiny Wan transformer (``torch.compile``, ``benchmarks.compile``'s tiny config,
  the same rule) / the plain compiled forward, bound 1.10x. Frames compiled while timed are printed: a recompile
  in the timed rounds spoils the ratio.

Sessions are entered outside the timed part: each steered sample times the second pipeline call, or the second
forward, inside an open session (the steady state a long run lives in: a session's first forward builds its plans);
the session's own enter and exit are printed apart, as information.
``--runs`` instead times whole 6-step runs of the tiny pipeline (what ``../shared/tools/quick_guard.py`` times) in an
open session with a rule never on, with DyMoS on, and entering their own session, each over the plain run.
``--counts`` also prints, from cProfile (deterministic, no timing), the attnsteer functions that run per step of the
tiny pipeline and the other functions they call.

    python -m benchmarks.percall               # about 2 minutes on 2 quiet cores (estimated)
    python -m benchmarks.percall --threads 1   # steadier on a shared machine
    python -m benchmarks.percall --dry-run     # tiny sizes, one round, compile with dynamo's eager backend
    python -m benchmarks.percall --counts      # and the per-step call counts
    python -m benchmarks.percall --runs        # instead: a whole 6-step run's overhead, by where it goes
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch._dynamo.utils import counters

import attnsteer as at
from benchmarks.common import machine, timed
from benchmarks.guard import Row, cpu_model, load

TINY_BOUND, LARGE_BOUND, COMPILED_BOUND = 1.10, 1.02, 1.10
DYMOS = at.Rule(at.frames.generated, at.frames.reference, at.bias(-0.6))


def interleaved(methods: dict[str, Callable[[], float]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each method's timed part (each returns its own), ``rounds`` rounds after ``warmup`` untimed ones."""
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            samples[name].append(fn())
    return samples


def tiny_pipeline():
    """(pipeline, its call's arguments for ``steps`` steps, the DyMoS recipe) of the tiny Wan I2V pipeline."""
    from attnsteer.testing.tiny import build_tiny, test_image

    pipe, kw = build_tiny("tiny-wan")
    pipe.set_progress_bar_config(disable=True)

    def arguments(steps: int) -> dict:
        return kw(prompt="a cat", output_type="latent", num_inference_steps=steps, image=test_image())

    return pipe, arguments, at.recipes.dymos(gamma=0.6, stop=1.0)


def measure_tiny(rounds: int, warmup: int) -> list[Row]:
    pipe, arguments, recipe = tiny_pipeline()
    args = arguments(1)
    entered: list[float] = []

    def plain() -> float:
        return timed(lambda: pipe(generator=torch.Generator().manual_seed(0), **args))

    def steered() -> float:
        start = time.perf_counter()
        with at.steer(pipe, recipe):
            first = timed(lambda: pipe(generator=torch.Generator().manual_seed(0), **args))  # builds the plans
            seconds = timed(lambda: pipe(generator=torch.Generator().manual_seed(0), **args))
        entered.append(time.perf_counter() - start - first - seconds)
        return seconds

    samples = interleaved({"plain": plain, "steered": steered}, rounds, warmup)
    base = statistics.median(samples["plain"])
    return [Row("steered tiny-wan step (DyMoS)", "pipeline, 1 step, guidance", "time / plain",
                [s / p for s, p in zip(samples["steered"], samples["plain"])], TINY_BOUND, f"  (plain {base * 1e3:.1f} ms)"),
            Row("session enter + exit (tiny-wan)", "at.steer(pipe, dymos)", "time / plain step",
                [e / base for e in entered[-rounds:]], None)]


def measure_runs(rounds: int, warmup: int, steps: int = 6) -> list[Row]:
    """Where a whole steered run's overhead goes (what ``../shared/tools/quick_guard.py`` times: a ``steps``-step
    tiny-wan run that opens its own session): the run in an open session with a rule that is never on (the hooks),
    with DyMoS on (its steered calls), and the run with its session entered and left around it (the session's
    enter, exit and first forwards), each over the plain run of the same round."""
    pipe, arguments, recipe = tiny_pipeline()
    args = arguments(steps)
    never = at.Rule(at.frames.generated, at.frames.reference, at.bias(-0.6), when=at.steps(start=10**6))

    def run() -> float:
        return timed(lambda: pipe(generator=torch.Generator().manual_seed(0), **args))

    def in_session(rule) -> Callable[[], float]:
        def fn() -> float:
            with at.steer(pipe, rule):
                run()  # the session's first run builds its plans: time the next
                return run()
        return fn

    def session_run() -> None:
        with at.steer(pipe, recipe):
            pipe(generator=torch.Generator().manual_seed(0), **args)

    samples = interleaved({"plain": run, "never": in_session(never), "dymos": in_session(recipe),
                           "session": lambda: timed(session_run)}, rounds, warmup)
    base = statistics.median(samples["plain"])
    shape = f"pipeline, {steps} steps, guidance"
    ratio = lambda name: [s / p for s, p in zip(samples[name], samples["plain"])]  # noqa: E731
    return [Row("run in a session, rule never on", shape, "time / plain", ratio("never"), None,
                f"  (plain {base * 1e3:.1f} ms)"),
            Row("run in a session, DyMoS on", shape, "time / plain", ratio("dymos"), None),
            Row("run entering its own session, DyMoS on", shape, "time / plain", ratio("session"), None)]


def large_transformer(dry: bool, device: str) -> tuple[torch.nn.Module, dict, str]:
    """A Wan transformer at 9,216 tokens (``dry``: 4 x 8 x 8 = 256), random weights, and its forward's inputs."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    heads, side = (2, 16) if dry else (4, 96)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=64, in_channels=36, out_channels=16,
        text_dim=64, freq_dim=256, ffn_dim=4 * heads * 64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    ).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    kwargs = dict(hidden_states=torch.randn(1, 36, 4, side, side, generator=gen).to(device),
                  encoder_hidden_states=torch.randn(1, 64, 64, generator=gen).to(device),
                  timestep=torch.tensor([500.0], device=device), return_dict=False)
    tokens = 4 * (side // 2) ** 2
    return model, kwargs, f"2 blocks, {heads}x64, {tokens} tokens"


def forward_rows(name: str, shape: str, plain_model: torch.nn.Module, steered_model: torch.nn.Module,
                 target: torch.nn.Module, kwargs: dict, rounds: int, warmup: int, bound: float,
                 compiled: bool = False) -> list[Row]:
    """One forward of ``plain_model`` against one of ``steered_model`` inside an open DyMoS session on ``target``."""
    during = {"plain": 0, "steered": 0}

    def run(model, key):
        def fn() -> float:
            before = counters["frames"]["ok"]
            with torch.no_grad():
                seconds = timed(lambda: model(**kwargs))
            during[key] += counters["frames"]["ok"] - before
            return seconds
        return fn

    steered = run(steered_model, "steered")

    def steered_in_session() -> float:
        with at.steer(target, DYMOS, num_steps=1):
            with torch.no_grad():  # a session's first forward builds its plans: the steady state is the next one
                steered_model(**kwargs)
            return steered()

    samples = interleaved({"plain": run(plain_model, "plain"), "steered": steered_in_session}, rounds, warmup)
    ratios = [s / p for s, p in zip(samples["steered"], samples["plain"])]
    note = f"  (plain {statistics.median(samples['plain']) * 1e3:.1f} ms"
    if compiled:
        note += f"; frames compiled while timed: plain {during['plain']}, steered {during['steered']}"
    return [Row(name, shape, "time / plain", ratios, bound, note + ")")]


def measure_large(rounds: int, warmup: int, dry: bool, device: str) -> list[Row]:
    model, kwargs, shape = large_transformer(dry, device)
    return forward_rows("steered Wan forward (DyMoS)", shape, model, model, model, kwargs, rounds, warmup, LARGE_BOUND)


def measure_compiled(rounds: int, warmup: int, dry: bool, device: str) -> list[Row]:
    from benchmarks import compile as compile_bench

    model, kwargs, _ = compile_bench.build("tiny", device)
    kwargs = {**kwargs, "timestep": torch.tensor([500.0], device=device)}
    whole = torch.compile(model, backend="eager" if dry else "inductor")
    return forward_rows("steered compiled / plain compiled", "tiny Wan transformer", whole, whole, model, kwargs,
                        rounds, warmup, COMPILED_BOUND, compiled=True)


def call_counts(steps: int = 4) -> None:
    """Per step of the tiny pipeline (steady state, from cProfile): attnsteer's function calls and the calls they make."""
    pipe, arguments, recipe = tiny_pipeline()

    def profile(n: int) -> tuple[collections.Counter, collections.Counter]:
        kwargs = arguments(n)
        with at.steer(pipe, recipe):
            pipe(generator=torch.Generator().manual_seed(0), **kwargs)  # warm
        profiler = cProfile.Profile()
        with at.steer(pipe, recipe):
            profiler.enable()
            pipe(generator=torch.Generator().manual_seed(0), **kwargs)
            profiler.disable()
        ours, theirs = collections.Counter(), collections.Counter()
        for (file, _, name), (_, calls, _, _, callers) in pstats.Stats(profiler).stats.items():
            if "/attnsteer/" in file:
                ours[f"{file.split('/attnsteer/')[-1]}:{name}"] += calls
            else:
                made = sum(c[1] for (f, _, _), c in callers.items() if "/attnsteer/" in f and "hooks.py" not in f)
                if made:
                    theirs[f"{file.split('site-packages/')[-1]}:{name}"] += made
        return ours, theirs

    short, long = profile(2), profile(2 + steps)
    for title, a, b in (("attnsteer functions", short[0], long[0]),
                        ("calls made by attnsteer code (outside the SDPA interceptor)", short[1], long[1])):
        per = {k: (b[k] - a.get(k, 0)) / steps for k in b if b[k] != a.get(k, 0)}
        print(f"# {title}: {sum(per.values()):.1f} per step")
        for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:25]:
            print(f"#   {v:7.1f}  {k}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.percall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one round: check that it runs")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--counts", action="store_true", help="also print the per-step call counts (cProfile)")
    parser.add_argument("--runs", action="store_true", help="instead: where a whole 6-step steered run's overhead "
                        "goes (hooks, steered calls, the session's own enter, exit and first forwards)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rounds, warmup = (1, 1) if args.dry_run else (args.rounds, 2)
    started, load_before = time.perf_counter(), load()
    print(f"# attnsteer per-call overhead{' (dry run)' if args.dry_run else ''} on {machine()}; {cpu_model()}; "
          f"{datetime.date.today().isoformat()}")
    if args.runs:
        rounds, steps = (1, 2) if args.dry_run else (rounds * 3, 6)  # short runs: more rounds
        rows = measure_runs(rounds, warmup, steps=steps)
    else:
        rows = [*measure_tiny(rounds, warmup), *measure_large(rounds, warmup, args.dry_run, device),
                *measure_compiled(rounds, warmup + 2, args.dry_run, device)]  # compiles, and settles its guards
    print("| case | shape | measure | median | spread | bound | verdict |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(c.strip() for c in row.cells(not args.dry_run)) + " |")
    print(f"# {time.perf_counter() - started:.0f} s; 1-minute load average {load_before} before, {load()} after")
    if args.counts:
        call_counts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
