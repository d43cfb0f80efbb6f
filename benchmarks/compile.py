"""Benchmark: attnsteer under torch.compile, on tiny Wan's transformer (CPU unless a GPU is present).

One "run" is ``--steps`` forwards at decreasing timesteps, as a pipeline makes. Timed side by side
(interleaved medians): plain eager, plain compiled (whole transformer; and regional,
``compile_repeated_blocks``), steered eager and steered compiled (DyMoS's -1 bias on the reference frame,
on for the first half of the steps). For each compiled variant it prints, from ``torch._dynamo.utils.counters``, the graph
breaks and graphs compiled by its first run from a reset dynamo cache, the frames compiled again by a
second run (recompiles in the steady state), and checks the steered compiled output against steered eager.

    python -m benchmarks.compile            # tiny config, 4 steps
    python -m benchmarks.compile --repeats 10
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch._dynamo.utils import counters

import attnsteer as at
from attnsteer.testing.tiny import tiny_wan
from benchmarks.common import machine, time_interleaved


def inputs(device: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(1, 16, 32, generator=gen),
                encoder_hidden_states_image=torch.randn(1, 5, 16, generator=gen), return_dict=False)


def one_run(model, kwargs: dict, steps: int) -> torch.Tensor:
    """``steps`` forwards at decreasing timesteps; the sum of their outputs."""
    total = 0
    for t in torch.linspace(999, 1, steps):
        total = total + model(timestep=t[None], **kwargs)[0]
    return total


def counted(fn) -> dict[str, int]:
    """Graph breaks, graphs compiled and frames compiled while ``fn`` runs."""
    counters.clear()
    fn()
    return {"graph_breaks": sum(counters["graph_break"].values()), "graphs": counters["stats"]["unique_graphs"],
            "frames_compiled": counters["frames"]["ok"]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eager = tiny_wan(seed=0).transformer.to(device).eval()
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs(device).items()}
    whole = torch.compile(eager)
    regional = copy.deepcopy(eager)
    regional.compile_repeated_blocks()
    # DyMoS's rule for every row (a bare transformer call has no guidance branch)
    recipe = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0), when=at.progress(stop=0.5))
    steps = args.steps

    def steered(model, target):
        def run():
            with at.steer(target, recipe, num_steps=steps):
                return one_run(model, kwargs, steps)
        return run

    methods = {
        "eager": lambda: one_run(eager, kwargs, steps),
        "compiled": lambda: one_run(whole, kwargs, steps),
        "regional": lambda: one_run(regional, kwargs, steps),
        "steered eager": steered(eager, eager),
        "steered compiled": steered(whole, eager),
        "steered regional": steered(regional, regional),
    }
    print(f"tiny Wan transformer, {steps} forwards per run; {machine()}")
    with torch.no_grad():
        for name in ("compiled", "regional", "steered compiled", "steered regional"):
            torch._dynamo.reset()  # dynamo caches per code object, shared by the variants: count each from scratch
            first, second = counted(methods[name]), counted(methods[name])
            print(f"  {name:>17}: first run {first['graph_breaks']} graph breaks, {first['graphs']} graphs, "
                  f"{first['frames_compiled']} frames compiled; second run {second['frames_compiled']} recompiled")
        reference = methods["steered eager"]()
        for name in ("steered compiled", "steered regional"):
            diff = float((methods[name]() - reference).abs().max())
            print(f"  {name} vs steered eager: max |diff| {diff:.2e}")
        compiled_during = dict.fromkeys(methods, 0)

        def tracking(name, fn):  # frames compiled while timing: recompiles when variants alternate
            def run():
                before = counters["frames"]["ok"]
                fn()
                compiled_during[name] += counters["frames"]["ok"] - before
            return run

        times = time_interleaved({n: tracking(n, fn) for n, fn in methods.items()}, args.repeats)
    print(f"  timed interleaved, median of {args.repeats} runs after a warm-up round:")
    for name, seconds in times.items():
        print(f"  {name:>17}: {seconds * 1000:8.1f} ms   x{seconds / times['eager']:.2f} eager"
              f"   x{seconds / times['compiled']:.2f} compiled   {compiled_during[name]} frames compiled while timed")


if __name__ == "__main__":
    main()
