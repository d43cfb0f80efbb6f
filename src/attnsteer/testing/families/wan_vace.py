"""Tiny random-weight pipelines of Wan VACE (context blocks): built from configs, offline, seconds on a CPU (registered
in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import flow_unipc, prompt_embedding, wan_vae


def tiny_wan_vace(seed: int = 0) -> Any:
    """A Wan VACE pipeline: two main blocks, VACE context blocks at layers 0 and 1 (control: 16 + 16 latent
    channels + 64 mask channels), random weights."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    torch.manual_seed(seed)
    vae = wan_vae()
    transformer = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, vace_layers=[0, 1], vace_in_channels=96,
    )
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                           scheduler=flow_unipc())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_vace_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_wan_vace` (64x64, 5 frames = 2 latent frames, after one
    reference-image latent frame when called with ``reference_images=image``: 3 frames of 4x4 tokens)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 512, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 512, 32),
        height=64, width=64, num_frames=5, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs

wan_vace_call_kwargs.image_argument = "reference_images"  # the pipeline argument that takes the conditioning image
