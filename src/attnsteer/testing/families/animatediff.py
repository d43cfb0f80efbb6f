"""Tiny random-weight pipelines of AnimateDiff (SD UNet + MotionAdapter): built from configs, offline, seconds on a CPU
(registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import prompt_embedding, sd_vae, text_to_video


def tiny_animatediff(seed: int = 0) -> Any:
    """An AnimateDiff pipeline (SD UNet + MotionAdapter -> ``UNetMotionModel``, batch [uncond, cond]), random
    weights."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=2, attention_head_dim=8,
    )
    motion_adapter = MotionAdapter(block_out_channels=(16, 16), motion_layers_per_block=1, motion_norm_num_groups=2,
                                   motion_num_attention_heads=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
    pipe = text_to_video(AnimateDiffPipeline)(
        vae=sd_vae(), text_encoder=None, tokenizer=None, unet=unet, motion_adapter=motion_adapter,
        scheduler=scheduler, feature_extractor=None, image_encoder=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def animatediff_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_animatediff` (16x16, 3 frames of 8x8 latents, 4 prompt
    tokens, guidance 5)."""

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 4, 16), negative_prompt_embeds=prompt_embedding(negative_prompt, 4, 16),
        height=16, width=16, num_frames=3, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
