"""Tiny random-weight pipelines of LTX-Video image-to-video and ``LTXConditionPipeline``: built from configs, offline,
seconds on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import prompt_embedding, quiet_transformers


def _ltx_components(seed: int) -> dict[str, Any]:
    """Transformer, VAE and scheduler shared by the tiny LTX pipelines (VAE: 4x spatial, 4x temporal compression)."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=2, caption_channels=32,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return dict(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())


@quiet_transformers()
def tiny_ltx(seed: int = 0) -> Any:
    """An LTX-Video I2V pipeline (per-token timesteps, batch [uncond, cond]), random weights."""
    from diffusers import LTXImageToVideoPipeline

    pipe = LTXImageToVideoPipeline(tokenizer=None, text_encoder=None, **_ltx_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@quiet_transformers()
def tiny_ltx_condition(seed: int = 0) -> Any:
    """An ``LTXConditionPipeline`` (conditions at frames > 0 become extra tokens before the video, positions
    from ``video_coords``), random weights. Called with ``image=...`` it conditions latent frame 0."""
    from diffusers import LTXConditionPipeline

    pipe = LTXConditionPipeline(tokenizer=None, text_encoder=None, **_ltx_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_ltx` or :func:`tiny_ltx_condition` (32x32, 9 frames =
    3 latent frames of 8x8 tokens, 4 steps)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 16, 32), prompt_attention_mask=torch.ones(1, 16, dtype=torch.long),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 16, 32),
        negative_prompt_attention_mask=torch.ones(1, 16, dtype=torch.long),
        height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=3.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
