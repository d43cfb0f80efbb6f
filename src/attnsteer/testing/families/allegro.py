"""Tiny random-weight pipelines of Allegro text-to-video: built from configs, offline, seconds on a CPU (registered in
:data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import no_progress_bar, text_embedding


def tiny_allegro(seed: int = 0) -> Any:
    """An Allegro text-to-video pipeline (video-only self-attention, text cross-attention, batch [uncond, cond]),
    random weights."""
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    torch.manual_seed(seed)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=2,
        cross_attention_dim=24, sample_width=8, sample_height=8, sample_frames=8, caption_channels=24,
    )
    vae = AutoencoderKLAllegro(
        in_channels=3, out_channels=3, down_block_types=("AllegroDownBlock3D",) * 4,
        up_block_types=("AllegroUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    vae.enable_tiling()  # diffusers' Allegro VAE decodes only tiled
    return no_progress_bar(AllegroPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                  scheduler=DDIMScheduler()))


def allegro_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_allegro` (32x32, 9 frames = 3 latent frames of 2x2 tokens,
    8 text tokens in cross-attention, padded per prompt, 4 steps)."""
    (embeds, mask), (negative, negative_mask) = text_embedding(prompt, 8, 24), text_embedding(negative_prompt, 8, 24)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask, height=32, width=32, num_frames=9, num_inference_steps=4,
        guidance_scale=6.0, max_sequence_length=8, output_type="np", negative_prompt=None,  # its default is ""
    )
    kwargs.update(overrides)
    return kwargs
