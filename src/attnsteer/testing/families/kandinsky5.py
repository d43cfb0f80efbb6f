"""Tiny random-weight pipelines of Kandinsky 5 image-to-video and text-to-video: built from configs, offline, seconds
on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import no_progress_bar, prompt_embedding


def tiny_kandinsky5_i2v(seed: int = 0) -> Any:
    """A Kandinsky 5 image-to-video pipeline (the image replaces latent frame 0; video-only self-attention, text
    cross-attention; conditional then unconditional forward per step), random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        Kandinsky5I2VPipeline,
        Kandinsky5Transformer3DModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4,
    )
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(1, 1, 2), visual_cond=True,
        attention_type="regular",
    )
    for name, param in transformer.named_parameters():  # the modulations start at zero (gates shut): open them
        if "modulation" in name:
            torch.nn.init.normal_(param, std=0.1)
    return no_progress_bar(Kandinsky5I2VPipeline(
        transformer=transformer, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    ))


def kandinsky5_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_kandinsky5_i2v` (32x32, 17 frames = 5 latent frames of 2x2
    tokens, 8 Qwen text tokens in cross-attention, a pooled CLIP embedding, 4 steps). The pipeline renormalises
    the first 4 latent frames by the next ones after denoising: fewer than 5 latent frames make NaNs."""

    kwargs: dict[str, Any] = dict(height=32, width=32, num_frames=17, num_inference_steps=4, guidance_scale=4.0,
                                  max_sequence_length=8, output_type="np")
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds_qwen"] = prompt_embedding(text, 8, 32)
        kwargs[f"{prefix}prompt_embeds_clip"] = prompt_embedding("pooled: " + text, 1, 16)[:, 0]
        kwargs[f"{prefix}prompt_cu_seqlens"] = torch.tensor([0, 8], dtype=torch.int32)
    kwargs.update(overrides)
    return kwargs


def tiny_kandinsky5_t2v(seed: int = 0) -> Any:
    """The Kandinsky 5 text-to-video pipeline on :func:`tiny_kandinsky5_i2v`'s components (the
    visual condition is zeros; video-only self-attention, text cross-attention; conditional then unconditional
    forward per step), random weights."""
    from diffusers import Kandinsky5T2VPipeline

    return no_progress_bar(Kandinsky5T2VPipeline(**tiny_kandinsky5_i2v(seed).components))
