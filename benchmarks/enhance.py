"""Benchmark: what the Enhance-A-Video recipe (a readout from each call's q and k plus an output scale)
adds to a denoising step, as a ratio to the unsteered transformer forward, side by side in one run.

Methods, each on its own copy of the same transformer (sessions stay open while timing, round-robin):

- ``vanilla``: no attnsteer;
- ``output_scale(1)``: the interception and the output stage alone (a constant factor, no readout);
- ``enhance_a_video``: the recipe (readout + output scale).

Models: the tiny Wan, CogVideoX and HunyuanVideo pipelines (the transformer forward of one step, on the
inputs the pipeline gives it), and a larger Wan transformer on CPU (9 latent frames of 16x16 and of
32x32 tokens; the largest with at most 5 repeats).

    python -m benchmarks.enhance            # all models
    python -m benchmarks.enhance --quick    # the tiny models only
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch

import attnsteer as at
from attnsteer.testing import tiny
from benchmarks.common import format_row, machine, time_interleaved

METHODS = {
    "vanilla": None,
    "output_scale(1)": lambda: at.Rule(query=at.video, key=at.video, transform=at.output_scale(1.0)),
    "enhance_a_video": lambda: at.recipes.enhance_a_video(),
}


def tiny_forward(name: str) -> tuple[torch.nn.Module, dict]:
    """A tiny pipeline's transformer and the keyword arguments of its first forward."""
    pipe, call_kwargs = tiny.build_tiny(name)
    captured: dict = {}

    def keep(module, args, kwargs):
        if not captured:
            captured.update(kwargs)

    handle = pipe.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        pipe(image=tiny.test_image(), **call_kwargs(output_type="latent", num_inference_steps=1))
    finally:
        handle.remove()
    return pipe.transformer, captured


def larger_wan(side: int) -> tuple[torch.nn.Module, dict]:
    """A Wan text-to-video transformer at 9 latent frames x ``side`` x ``side`` tokens, 4 heads of 32."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=256, ffn_dim=256, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )
    inputs = dict(hidden_states=torch.randn(1, 16, 9, 2 * side, 2 * side), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 64, 64), return_dict=False)
    return model, inputs


def time_methods(model: torch.nn.Module, inputs: dict, repeats: int) -> dict[str, float]:
    copies = {name: copy.deepcopy(model) for name in METHODS}
    with contextlib.ExitStack() as stack, torch.no_grad():
        for name, make in METHODS.items():
            if make is not None:
                stack.enter_context(at.steer(copies[name], make(), num_steps=1))
        return time_interleaved({name: (lambda m=m: m(**inputs)) for name, m in copies.items()}, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    models = {name: (lambda n=name: tiny_forward(n)) for name in ("tiny-wan", "tiny-cogvideox", "tiny-hunyuan")}
    if not args.quick:
        models["wan 2304 tokens"] = lambda: larger_wan(16)
        models["wan 9216 tokens"] = lambda: larger_wan(32)
    print(f"# enhance_a_video overhead on {machine()}; median of {args.repeats} interleaved transformer forwards "
          "(5 at 9216 tokens)")
    widths = [16, 10, 16, 16]
    print(format_row(["model", "vanilla", "output_scale(1)", "enhance_a_video"], widths))
    for name, build in models.items():
        model, inputs = build()
        times = time_methods(model, inputs, min(args.repeats, 5) if "9216" in name else args.repeats)
        base = times["vanilla"]
        ratios = [f"{times[m] / base:.3f}" for m in list(METHODS)[1:]]
        print(format_row([name, f"{base * 1e3:.1f} ms"] + ratios, widths))


if __name__ == "__main__":
    main()
