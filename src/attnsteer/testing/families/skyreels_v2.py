"""Tiny random-weight pipelines of SkyReels-V2 diffusion forcing: built from configs, offline, seconds on a CPU
(registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import flow_unipc, prompt_embedding, wan_vae


def tiny_skyreels_v2_df(seed: int = 0) -> Any:
    """A SkyReels-V2 diffusion-forcing image-to-video pipeline (per-frame timesteps; the image is a clean prefix
    latent frame), random weights."""
    from diffusers import SkyReelsV2DiffusionForcingImageToVideoPipeline, SkyReelsV2Transformer3DModel

    torch.manual_seed(seed)
    vae = wan_vae()
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    pipe = SkyReelsV2DiffusionForcingImageToVideoPipeline(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=flow_unipc(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def skyreels_v2_df_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_skyreels_v2_df` (64x64, 9 frames = 3 latent frames of 4x4
    tokens, frame 0 the image; synchronous: ``ar_step=0``, override it for asynchronous diffusion forcing)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 512, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 512, 32),
        height=64, width=64, num_frames=9, base_num_frames=9, num_inference_steps=4, guidance_scale=5.0,
        ar_step=0, causal_block_size=1, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
