"""Tiny random-weight pipelines of Motif-Video: built from configs, offline, seconds on a CPU (registered in
:data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..tiny_parts import prompt_embedding, text_mask


def tiny_motif_video(seed: int = 0) -> Any:
    """A Motif-Video I2V pipeline (joint video+text attention, one dual-stream, one single-stream and one decoder
    block, guider contexts), random weights; without a text encoder it has no SigLIP image tokens."""
    from diffusers import (
        AutoencoderKLWan,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        MotifVideoImage2VideoPipeline,
        MotifVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = MotifVideoTransformer3DModel(
        in_channels=33, out_channels=16, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=2, num_decoder_layers=1, text_embed_dim=16, rope_axes_dim=(2, 2, 4),
    )
    pipe = MotifVideoImage2VideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
        transformer=transformer, guider=ClassifierFreeGuidance(guidance_scale=5.0), feature_extractor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def motif_video_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", guidance_scale: float | None = None,
                            **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_motif_video` (64x64 image, 9 frames = 3 latent frames of
    4x4 tokens, then 8 text tokens with padding)."""

    if guidance_scale is not None:
        raise ConfigError("Motif-Video pipelines take the guidance scale from their guider: set pipe.guider")
    kwargs: dict[str, Any] = dict(prompt=None, height=64, width=64, num_frames=9, num_inference_steps=4,
                                  output_type="np")
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds"] = prompt_embedding(text, 8, 16)
        kwargs[f"{prefix}prompt_attention_mask"] = text_mask(text, 8)
    kwargs.update(overrides)
    return kwargs
