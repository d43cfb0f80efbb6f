"""Train the toy image-to-video model with flow matching on procedurally generated clips.

    python -m attnsteer.toy.train                 # reproduces the shipped weights (seed 0; docs/toy.md states the time)
    python -m attnsteer.toy.train --resume        # continues an interrupted run from its last checkpoint
    python -m attnsteer.toy.train --steps 5 --out /tmp/toy.safetensors   # smoke run

Rectified flow: x_t = (1 - t) x0 + t noise, the model predicts noise - x0 (the velocity that
diffusers' FlowMatchEulerDiscreteScheduler integrates), t drawn logit-normal. The text condition
is dropped 10% of the time and, separately, the image condition 10% of the time, so classifier-free
guidance works and the same weights run as text-to-video.

Two recipes (stored in the weights' metadata, read back by the pipeline):

- ``clean-reference`` (default): put the clean reference latents in frame 0 of the noisy input (as
  Wan 2.2 TI2V does) and score only the generated frames; the pipeline keeps frame 0 clean at every step.
- ``noisy-reference``: Wan 2.1's I2V conditioning only; latent frame 0 is denoised like the others.

The shipped model also has the frame-index input channel (``--frame-ramp``); docs/toy.md says why.
The weights written are an exponential moving average of the trained ones (``--ema``), which
samples cleaner than the last step's. Every ``--checkpoint-every`` steps the whole training state
(weights, average, optimiser, schedule, random state) goes to ``OUT.checkpoint.pt``; ``--resume``
continues from there and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .model import (
    TRANSFORMER_CONFIG,
    WEIGHTS,
    build_modules,
    condition,
    has_frame_ramp,
    input_channels,
    save_weights,
    to_latents,
)
from .world import sample_batch

DROP_TEXT = 0.1
EMA_DECAY = 0.999
DROP_IMAGE = 0.1
RECIPES = ("clean-reference", "noisy-reference")


def training_loss(transformer, prompts, clips, generator: torch.Generator, recipe: str = RECIPES[0]) -> torch.Tensor:
    """Flow-matching loss of one batch of clips, with the condition dropouts (random numbers drawn on the CPU)."""
    device = transformer.device
    x0 = to_latents(torch.from_numpy(np.stack([c.video for c in clips]))).to(device)
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=generator)).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    tt = t.view(b, 1, 1, 1, 1)
    noisy = (1 - tt) * x0 + tt * noise
    keep_image = (torch.rand(b, generator=generator) >= DROP_IMAGE).to(device, x0.dtype).view(b, 1, 1, 1, 1)
    cond = condition(x0[:, :, 0], x0, has_frame_ramp(transformer))
    cond[:, : input_channels(False) - x0.shape[1]] *= keep_image  # drop mask and reference, keep the frame index
    drop_text = (torch.rand(b, generator=generator) < DROP_TEXT).tolist()
    text = prompts([None if drop else c.prompt for c, drop in zip(clips, drop_text)])
    scored = torch.ones_like(x0[:, :1])
    if recipe == "clean-reference":  # image-conditioned rows see the clean frame 0 and are not scored on it
        noisy[:, :, :1] = torch.where(keep_image > 0, x0[:, :, :1], noisy[:, :, :1])
        scored[:, :, :1] = 1 - keep_image
    velocity = transformer(hidden_states=torch.cat([noisy, cond], 1), timestep=t * 1000,
                           encoder_hidden_states=text, return_dict=False)[0]
    error = ((velocity - (noise - x0)) ** 2).mean(dim=1, keepdim=True)
    return (error * scored).sum() / scored.expand_as(error).sum()


def checkpoint_path(out: Path) -> Path:
    """Where a run writing ``out`` keeps its resumable training state."""
    return out.with_suffix(".checkpoint.pt")


def train(steps: int, batch: int, seed: int, lr: float, out: Path, minutes: float | None,
          recipe: str = RECIPES[0], device: str = "cpu", threads: int = 2, checkpoint_every: int = 0,
          config: dict | None = None, ema_decay: float = EMA_DECAY, resume: bool = False) -> dict:
    """Train from ``seed`` for ``steps`` (or until ``minutes`` pass) and write the averaged weights to ``out``;
    ``config`` overrides entries of the transformer's ``TRANSFORMER_CONFIG``; ``resume`` continues from
    ``checkpoint_path(out)``."""
    torch.set_num_threads(threads)
    transformer, prompts = build_modules(seed, {**TRANSFORMER_CONFIG, **(config or {})})
    transformer, prompts = transformer.to(device), prompts.to(device)
    transformer.train()
    modules = torch.nn.ModuleDict({"transformer": transformer, "prompts": prompts})
    average = torch.optim.swa_utils.AveragedModel(
        modules, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
    params = list(modules.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 0
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    first, seconds, losses = 0, 0.0, []
    saved = checkpoint_path(out)
    if resume and saved.is_file():
        state = torch.load(saved, weights_only=False)
        modules.load_state_dict(state["modules"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        if average is not None:
            average.load_state_dict(state["average"])
        first, seconds, losses = state["step"], state["seconds"], state["losses"]
    started = time.perf_counter() - seconds
    bar = tqdm(range(first, steps), desc="training toy I2V", unit="step", initial=first, total=steps)
    step = first - 1
    for step in bar:
        loss = training_loss(transformer, prompts, sample_batch(seed * 1_000_003 + step, batch), generator,
                             recipe)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if average is not None:
            average.update_parameters(modules)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            torch.save({"modules": modules.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "generator": generator.get_state(),
                        "average": None if average is None else average.state_dict(), "step": step + 1,
                        "seconds": time.perf_counter() - started, "losses": losses}, saved)
        if minutes is not None and time.perf_counter() - started > minutes * 60:
            break
    info = {"recipe": recipe, "seed": seed, "steps": step + 1, "batch": batch, "lr": lr, "ema": ema_decay,
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "seconds": round(time.perf_counter() - started, 1), "device": str(device), "threads": threads}
    final = modules if average is None else average.module
    save_weights(final["transformer"].eval(), final["prompts"].eval(), out, **info)
    return info


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1, with a message that names the value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=8000)
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--minutes", type=float, help="stop early after this many minutes")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--recipe", choices=RECIPES, default=RECIPES[0])
    parser.add_argument("--device", default="cpu", help="e.g. cuda; the shipped weights were trained on the CPU")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads for torch")
    parser.add_argument("--checkpoint-every", type=int, default=500,
                        help="write the resumable training state to OUT.checkpoint.pt every N steps (0: never)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.checkpoint.pt if it exists")
    parser.add_argument("--ema", type=float, default=EMA_DECAY,
                        help="decay of the weights' moving average that is written (0: the last step's weights)")
    parser.add_argument("--heads", type=positive_int, default=TRANSFORMER_CONFIG["num_attention_heads"])
    parser.add_argument("--head-dim", type=positive_int, default=TRANSFORMER_CONFIG["attention_head_dim"])
    parser.add_argument("--layers", type=positive_int, default=TRANSFORMER_CONFIG["num_layers"])
    parser.add_argument("--frame-ramp", action=argparse.BooleanOptionalAction,
                        default=TRANSFORMER_CONFIG["in_channels"] == input_channels(frame_ramp=True),
                        help="add the frame-index input channel")
    args = parser.parse_args(argv)
    config = dict(num_attention_heads=args.heads, attention_head_dim=args.head_dim, num_layers=args.layers,
                  in_channels=input_channels(args.frame_ramp))
    info = train(args.steps, args.batch, args.seed, args.lr, args.out, args.minutes, args.recipe, args.device,
                 args.threads, args.checkpoint_every, config, args.ema, args.resume)
    print(f"wrote {args.out}: {info}")


if __name__ == "__main__":
    main()
