"""Benchmark: a DyMoS gamma sweep run sequentially (one pipeline call per gamma) against batched
(``chunk`` gammas as the rows of one call), timed side by side in one run, with the speed-up ratio.

Both runs are steered and recorded (``at.inspect``), as ``attnsteer sweep`` does; the batched outputs
are checked against the sequential ones (1e-5 on latents) before timing.

    python -m benchmarks.batched                       # tiny-wan, 8 gammas, chunk 8 and 4
    python -m benchmarks.batched --model tiny-cogvideox --gammas 4 --chunks 4,2
"""

from __future__ import annotations

import argparse

import torch

import attnsteer as at
from attnsteer.sweeps.batched import batch_call_kwargs, run_batched
from attnsteer.testing.tiny import build_tiny, test_image
from benchmarks.common import machine, time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batched", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-wan")
    parser.add_argument("--gammas", type=int, default=8, help="number of gamma values")
    parser.add_argument("--chunks", default="8,4", help="comma-separated chunk sizes to time")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipe, call_kwargs = build_tiny(args.model)
    kwargs = call_kwargs(prompt="a cat", output_type="latent", num_inference_steps=args.steps, image=test_image())
    gammas = [-2.0 + 3.0 * i / max(args.gammas - 1, 1) for i in range(args.gammas)]
    recipes = [at.recipes.dymos(gamma=g, stop=0.5) for g in gammas]

    def sequential() -> list[torch.Tensor]:
        out = []
        for recipe in recipes:
            with at.inspect(pipe), at.steer(pipe, recipe):
                out.append(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0])
        return out

    def batched(chunk: int):
        def run() -> list[torch.Tensor]:
            generate = lambda n: list(pipe(**batch_call_kwargs(pipe, kwargs, n, seed=0)).frames)  # noqa: E731
            return [latent for latent, _ in run_batched(pipe, recipes, generate, chunk=chunk)]

        return run

    chunks = [int(c) for c in args.chunks.split(",")]
    reference = sequential()
    for chunk in chunks:
        worst = max(float((a - b).abs().max()) for a, b in zip(reference, batched(chunk)()))
        assert worst <= 1e-5, f"chunk {chunk}: batched differs from sequential by {worst}"
    methods = {"sequential": sequential, **{f"batched chunk={c}": batched(c) for c in chunks}}
    times = time_interleaved(methods, args.repeats)
    print(f"{args.model}, {len(gammas)} gammas, {args.steps} steps, steered + recorded; {machine()}")
    for name, seconds in times.items():
        print(f"  {name:>18}: {seconds:7.3f} s   speed-up {times['sequential'] / seconds:5.2f}x")


if __name__ == "__main__":
    main()
