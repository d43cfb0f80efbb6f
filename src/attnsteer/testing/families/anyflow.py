"""Tiny random-weight pipelines of AnyFlow text-to-video: built from configs, offline, seconds on a CPU (registered in
:data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import prompt_embedding, text_to_video


def tiny_anyflow(seed: int = 0) -> Any:
    """A bidirectional AnyFlow pipeline (Wan-style video-only self-attention, flow-map timesteps, batch [uncond,
    cond]), random weights."""
    from diffusers import AnyFlowPipeline, AnyFlowTransformer3DModel, AutoencoderKLWan, FlowMapEulerDiscreteScheduler

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = AnyFlowTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=16, freq_dim=16, ffn_dim=16, num_layers=2, rope_max_seq_len=32,
    )
    pipe = text_to_video(AnyFlowPipeline)(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=FlowMapEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def anyflow_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_anyflow` (64x64, 9 frames = 3 latent frames of 4x4 tokens,
    8 text tokens, guidance 5)."""

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 16), negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 16),
        height=64, width=64, num_frames=9, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
