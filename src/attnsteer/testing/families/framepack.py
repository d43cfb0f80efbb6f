"""Tiny random-weight pipelines of HunyuanVideo Framepack: built from configs, offline, seconds on a CPU (registered in
:data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import prompt_embedding


def tiny_framepack(seed: int = 0) -> Any:
    """A HunyuanVideo Framepack I2V pipeline (history latents packed into a joint video+text sequence, SigLIP image
    tokens, branch by forward order), random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoFramepackPipeline,
        HunyuanVideoFramepackTransformer3DModel,
    )
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4,
    )
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4), has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True,
    )
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
    ))
    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        image_encoder=image_encoder, feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def framepack_call_kwargs(
    prompt: str = "a cat", negative_prompt: str = "", guidance_scale: float | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_framepack` (64x64, one section of 3 latent frames of 4x4 tokens
    after the start image and one 1x history frame, 4 + 4 history 4x/2x tokens, then 16 image + 8 text tokens; true
    CFG on). ``guidance_scale`` sets ``true_cfg_scale``; the text masks are all valid unless overridden."""
    kwargs: dict[str, Any] = dict(
        height=64, width=64, num_frames=9, latent_window_size=3, num_inference_steps=4,
        true_cfg_scale=3.0 if guidance_scale is None else guidance_scale, output_type="np",
    )
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds"] = prompt_embedding(text, 8, 16)
        kwargs[f"{prefix}prompt_attention_mask"] = torch.ones(1, 8, dtype=torch.long)
        kwargs[f"{prefix}pooled_prompt_embeds"] = prompt_embedding("pooled: " + text, 1, 8)[:, 0]
    kwargs.update(overrides)
    return kwargs
