"""Tiny random-weight pipelines of ChronoEdit (a Wan-derived image editor): built from configs, offline, seconds on a
CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import clip_image_encoder, flow_unipc, prompt_embedding, wan_vae


def tiny_chronoedit(seed: int = 0) -> Any:
    """A ChronoEdit pipeline (Wan 2.1 I2V-style, CLIP image tokens in cross-attention), random weights."""
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel

    torch.manual_seed(seed)
    vae = wan_vae()
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, image_dim=16, added_kv_proj_dim=24,
    )

    image_encoder, image_processor = clip_image_encoder()
    pipe = ChronoEditPipeline(
        tokenizer=None, text_encoder=None, image_encoder=image_encoder, image_processor=image_processor,
        transformer=transformer, vae=vae, scheduler=flow_unipc(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def chronoedit_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_chronoedit` (64x64; without temporal reasoning 5 frames =
    2 latent frames of 4x4 tokens: the input image, then the edited one)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 512, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 512, 32),
        height=64, width=64, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
