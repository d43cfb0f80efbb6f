"""Tiny random-weight pipelines of HunyuanVideo I2V (``latent_concat`` and ``token_replace``) and HunyuanVideo 1.5 I2V:
built from configs, offline, seconds on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..tiny_parts import prompt_embedding, quiet_transformers, text_mask


@quiet_transformers()
def tiny_hunyuan(seed: int = 0, image_condition_type: str = "latent_concat") -> Any:
    """A HunyuanVideo I2V pipeline (joint video+text attention, branch by forward order), random weights.

    ``image_condition_type`` is "latent_concat" (image latent and mask concatenated by channel) or
    "token_replace" (the image latent replaces frame 0)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4,
    )
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=9 if image_condition_type == "latent_concat" else 4, out_channels=4, num_attention_heads=2,
        attention_head_dim=10, num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=image_condition_type,
    )
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        image_processor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan_call_kwargs(
    prompt: str = "a cat", negative_prompt: str = "", guidance_scale: float | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_hunyuan` (64x64, 9 frames = 3 latent frames of 4x4 tokens,
    8 text tokens with padding, true CFG on: two forwards per step).

    ``guidance_scale`` sets ``true_cfg_scale`` (classifier-free guidance); the pipeline's own
    ``guidance_scale`` is the embedded (distilled) guidance, overridable by name as ``overrides``."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 16), prompt_attention_mask=text_mask(prompt, 8),
        pooled_prompt_embeds=prompt_embedding("pooled: " + prompt, 1, 8)[:, 0],
        negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 16),
        negative_prompt_attention_mask=text_mask(negative_prompt, 8),
        negative_pooled_prompt_embeds=prompt_embedding("pooled: " + negative_prompt, 1, 8)[:, 0],
        height=64, width=64, num_frames=9, num_inference_steps=4,
        true_cfg_scale=3.0 if guidance_scale is None else guidance_scale, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


@quiet_transformers()
def tiny_hunyuan15(seed: int = 0) -> Any:
    """A HunyuanVideo 1.5 I2V pipeline (video then image/byT5/text tokens, guider contexts), random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_refiner_layers=1,
        text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=16, rope_axes_dim=(2, 2, 4), target_size=64,
    )
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
    ))
    pipe = HunyuanVideo15ImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=None, tokenizer_2=None,
        guider=ClassifierFreeGuidance(guidance_scale=6.0), image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan15_call_kwargs(
    prompt: str = "a cat", negative_prompt: str = "", guidance_scale: float | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_hunyuan15` (64x64 image, 9 frames = 3 latent frames of 4x4
    tokens, then 16 image + 4 byT5 + 8 text tokens; the byT5 glyph tokens are all padding, as for a prompt without
    quoted text)."""
    if guidance_scale is not None:
        raise ConfigError("HunyuanVideo 1.5 pipelines take the guidance scale from their guider: set pipe.guider")
    kwargs: dict[str, Any] = dict(num_frames=9, num_inference_steps=4, output_type="np")
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds"] = prompt_embedding(text, 8, 16)
        kwargs[f"{prefix}prompt_embeds_mask"] = text_mask(text, 8)
        kwargs[f"{prefix}prompt_embeds_2"] = torch.zeros(1, 4, 8)
        kwargs[f"{prefix}prompt_embeds_mask_2"] = torch.zeros(1, 4, dtype=torch.long)
    kwargs.update(overrides)
    return kwargs
