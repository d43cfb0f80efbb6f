"""Benchmark: attnsteer under torch.compile, on a Wan transformer (CPU unless a GPU is present).

Two configs: ``tiny`` (tiny Wan's transformer: 2 blocks, 2 heads x 12, 3 x 16 tokens) and ``medium``
(2 blocks, 8 heads x 64 = hidden 512, 4 latent frames x 16 x 24 = 1536 tokens, random weights).
One "run" is ``--steps`` forwards at decreasing timesteps, as a pipeline makes. Timed side by side
(interleaved medians): plain eager, plain compiled (whole transformer; and regional,
``compile_repeated_blocks``), steered eager and steered compiled (DyMoS's -1 bias on the reference frame,
on for the first half of the steps; ``--always``: at every step). For each compiled variant it prints,
from ``torch._dynamo.utils.counters``, the graph breaks and graphs compiled by its first run from a
reset dynamo cache and the frames compiled again by a second run (a new session: recompiles in the
steady state), and checks the steered compiled output against steered eager.

    python -m benchmarks.compile                       # both configs
    python -m benchmarks.compile --config medium --repeats 5
    python -m benchmarks.compile --threads 1 --repeats 7   # steadier on a shared machine
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from torch._dynamo.utils import counters

import attnsteer as at
from attnsteer.testing.tiny import tiny_wan
from benchmarks.common import machine, time_interleaved

CONFIGS = ("tiny", "medium")


def build(config: str, device: str) -> tuple[torch.nn.Module, dict, str]:
    """(eager transformer, forward kwargs without the timestep, description) of one config."""
    gen = torch.Generator().manual_seed(1)
    if config == "tiny":
        model = tiny_wan(seed=0).transformer
        kwargs = dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=gen),
                      encoder_hidden_states=torch.randn(1, 16, 32, generator=gen),
                      encoder_hidden_states_image=torch.randn(1, 5, 16, generator=gen))
        about = "tiny Wan transformer (2 blocks, hidden 24, 3 x 16 tokens)"
    elif config == "medium":
        from diffusers import WanTransformer3DModel

        torch.manual_seed(0)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=64, in_channels=36, out_channels=16,
            text_dim=64, freq_dim=256, ffn_dim=1024, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
        )
        kwargs = dict(hidden_states=torch.randn(1, 36, 4, 32, 48, generator=gen),
                      encoder_hidden_states=torch.randn(1, 64, 64, generator=gen))
        about = "medium Wan transformer (2 blocks, hidden 512 = 8 heads x 64, 4 x 384 = 1536 tokens)"
    else:
        raise ValueError(f"unknown config {config!r}; allowed: {CONFIGS}")
    kwargs = {k: v.to(device) for k, v in kwargs.items()} | {"return_dict": False}
    return model.to(device).eval(), kwargs, about


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


def methods_of(eager: torch.nn.Module, kwargs: dict, steps: int, always: bool = False
               ) -> dict[str, Callable[[], torch.Tensor]]:
    """The six timed variants: plain and steered, each eager, compiled whole and compiled regionally."""
    whole = torch.compile(eager)
    regional = copy.deepcopy(eager)
    regional.compile_repeated_blocks()
    # DyMoS's rule for every row (a bare transformer call has no guidance branch)
    recipe = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0),
                     when=at.always if always else at.progress(stop=0.5))

    def steered(model, target):
        def run():
            with at.steer(target, recipe, num_steps=steps):
                return one_run(model, kwargs, steps)
        return run

    return {
        "eager": lambda: one_run(eager, kwargs, steps),
        "compiled": lambda: one_run(whole, kwargs, steps),
        "regional": lambda: one_run(regional, kwargs, steps),
        "steered eager": steered(eager, eager),
        "steered compiled": steered(whole, eager),
        "steered regional": steered(regional, regional),
    }


def measure(config: str, steps: int, repeats: int, device: str, always: bool = False) -> None:
    """Print the compile counts, the exactness and the interleaved timings of one config."""
    eager, kwargs, about = build(config, device)
    methods = methods_of(eager, kwargs, steps, always)
    print(f"{about}, {steps} forwards per run, rule on {'at every step' if always else 'for the first half'}; "
          f"{machine()}")
    with torch.no_grad():
        for name in ("compiled", "regional", "steered compiled", "steered regional"):
            torch._dynamo.reset()  # dynamo caches per code object, shared by the variants: count each from scratch
            first, second = counted(methods[name]), counted(methods[name])
            print(f"  {name:>17}: first run {first['graph_breaks']} graph breaks, {first['graphs']} graphs, "
                  f"{first['frames_compiled']} frames compiled; second run {second['frames_compiled']} recompiled")
        reference = methods["steered eager"]()
        effect = float((methods["eager"]() - reference).abs().max())
        print(f"  steered eager vs plain eager: max |diff| {effect:.2e} (the steering's effect)")
        for name in ("steered compiled", "steered regional"):
            diff = float((methods[name]() - reference).abs().max())
            size = float(reference.abs().max())
            print(f"  {name} vs steered eager: max |diff| {diff:.2e} (output max |x| {size:.2f})")
        compiled_during = dict.fromkeys(methods, 0)

        def tracking(name, fn):  # frames compiled while timing: recompiles when variants alternate
            def run():
                before = counters["frames"]["ok"]
                fn()
                compiled_during[name] += counters["frames"]["ok"] - before
            return run

        times = time_interleaved({n: tracking(n, fn) for n, fn in methods.items()}, repeats)
    print(f"  timed interleaved, median of {repeats} runs after a warm-up round:")
    for name, seconds in times.items():
        print(f"  {name:>17}: {seconds * 1000:8.1f} ms   x{seconds / times['eager']:.2f} eager"
              f"   x{seconds / times['compiled']:.2f} compiled   {compiled_during[name]} frames compiled while timed")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=(*CONFIGS, "both"), default="both")
    parser.add_argument("--steps", type=int, help="forwards per run (default: 4 tiny, 2 medium)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--always", action="store_true", help="the rule on at every step (default: first half)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for config in CONFIGS if args.config == "both" else (args.config,):
        measure(config, args.steps or (4 if config == "tiny" else 2), args.repeats, device, args.always)


if __name__ == "__main__":
    main()
