"""Tiny random-weight pipelines of Latte text-to-video: built from configs, offline, seconds on a CPU (registered in
:data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..tiny_parts import prompt_embedding, sd_vae, text_to_video


def tiny_latte(seed: int = 0) -> Any:
    """A Latte pipeline (spatial and temporal attention as separate calls, batch [uncond, cond]), random weights."""
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    torch.manual_seed(seed)
    transformer = LatteTransformer3DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=16,
        in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        video_length=3,  # the temporal position embedding has this many frames: calls must use as many
    )
    pipe = text_to_video(LattePipeline)(
        tokenizer=None, text_encoder=None, vae=sd_vae(), transformer=transformer, scheduler=DDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latte_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", num_frames: int | None = None,
                      **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_latte` (16x16, 3 frames of 8x8 latents = 4x4 patches,
    8 caption tokens, guidance 5). ``num_frames`` must be 3 (the tiny model's ``video_length``)."""

    if num_frames not in (None, 3):
        raise ConfigError(f"tiny-latte makes 3 frames (its temporal position embedding has 3), "
                          f"got num_frames={num_frames}")
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 16),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 16),
        negative_prompt=None, height=16, width=16, video_length=3, num_inference_steps=4,
        guidance_scale=5.0, output_type="np", clean_caption=False, mask_feature=False,
    )
    kwargs.update(overrides)
    return kwargs
