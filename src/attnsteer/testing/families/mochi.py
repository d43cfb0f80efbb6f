"""Tiny random-weight pipelines of Mochi text-to-video (joint video+text attention): built from configs, offline,
seconds on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import no_progress_bar, text_embedding


def tiny_mochi(seed: int = 0) -> Any:
    """A Mochi text-to-video pipeline (joint video+text attention, one SDPA call per batch row), random weights."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(seed)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16,
    )
    vae = AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
    )
    return no_progress_bar(MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                tokenizer=None, transformer=transformer))


def mochi_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_mochi` (32x32, 13 frames = 3 latent frames of 2x2 tokens,
    8 text tokens padded per prompt, 4 steps)."""
    (embeds, mask), (negative, negative_mask) = text_embedding(prompt, 8, 32), text_embedding(negative_prompt, 8, 32)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask, height=32, width=32, num_frames=13, num_inference_steps=4,
        guidance_scale=4.5, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
