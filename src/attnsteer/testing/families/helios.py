"""Tiny random-weight pipelines of Helios (chunked generation with history in the self-attention sequence): built from
configs, offline, seconds on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import prompt_embedding, wan_vae


def tiny_helios(seed: int = 0) -> Any:
    """A Helios pipeline (chunked generation with long/mid/short history in the self-attention sequence, history keys
    amplified, text in cross-attention, one forward per branch), random weights."""
    from diffusers import HeliosPipeline, HeliosScheduler, HeliosTransformer3DModel

    torch.manual_seed(seed)
    transformer = HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=16, freq_dim=32, ffn_dim=16, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_dim=(4, 4, 4), has_multi_term_memory_patch=True, guidance_cross_attn=True, zero_history_timestep=True,
        is_amplify_history=True,
    )
    with torch.no_grad():  # distinct per-head history key factors (the default init makes them all equal)
        for block in transformer.blocks:
            block.attn1.history_key_scale.copy_(torch.linspace(-1.0, 2.0, block.attn1.heads))
    pipe = HeliosPipeline(
        tokenizer=None, text_encoder=None, vae=wan_vae(), transformer=transformer,
        scheduler=HeliosScheduler(stage_range=[0, 1], stages=1, use_dynamic_shifting=True),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def helios_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_helios` (32x32, one chunk of 2 latent frames of 2x2 tokens
    after history sizes [4, 2, 1]: 1 long and 1 mid history token, then the kept first frame and one 1x history
    frame; 8 text tokens, guidance 5)."""

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 16), negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 16),
        height=32, width=32, num_frames=5, num_latent_frames_per_chunk=2, history_sizes=[4, 2, 1],
        num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
