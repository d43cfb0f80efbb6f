"""Tiny random-weight pipelines of Wan 2.1 / 2.2 (I2V with CLIP tokens, the two-expert A14B, TI2V-5B with
``expand_timesteps``) and Lucy Edit, a Wan transformer: built from configs, offline, seconds on a CPU (registered in
:data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import clip_image_encoder, prompt_embedding, quiet_transformers, test_image, wan_vae


@quiet_transformers()
def tiny_wan(seed: int = 0) -> Any:
    """A Wan 2.1-style image-to-video pipeline (CLIP image tokens in cross-attention), random weights."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=16, added_kv_proj_dim=24,
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    image_encoder, image_processor = clip_image_encoder()
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler,
        image_encoder=image_encoder, image_processor=image_processor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@quiet_transformers()
def tiny_wan22(seed: int = 0) -> Any:
    """A Wan 2.2 A14B-style I2V pipeline: two experts (high noise, then low noise after the boundary), no CLIP."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    experts = [
        WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )
        for _ in range(2)
    ]
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=experts[0], transformer_2=experts[1],
        scheduler=scheduler, boundary_ratio=0.8,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_wan` (64x64, 9 frames = 3 latent frames, 4 steps)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 512, 32),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 512, 32),
        height=64, width=64, num_frames=9, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


@quiet_transformers()
def tiny_wan_ti2v(seed: int = 0) -> Any:
    """A Wan 2.2 TI2V-5B-style pipeline (``expand_timesteps``: the image replaces latent frame 0, whose
    tokens get timestep 0), random weights."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler, expand_timesteps=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_lucy_edit(seed: int = 0) -> Any:
    """A Lucy Edit pipeline (video editing: the source video's latents concatenated by channel; two Wan experts,
    high then low noise; one forward per branch), random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LucyEditPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    experts = [
        WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=32, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )
        for _ in range(2)
    ]
    pipe = LucyEditPipeline(
        tokenizer=None, text_encoder=None, vae=wan_vae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=experts[0], transformer_2=experts[1], boundary_ratio=0.6,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lucy_edit_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_lucy_edit` (64x64, 9 frames = 3 latent frames of 4x4 tokens;
    the source video is the built-in test image, still)."""

    frames, size = overrides.pop("num_frames", 9), overrides.get("height", 64)
    kwargs: dict[str, Any] = dict(
        video=[test_image(size)] * frames, prompt_embeds=prompt_embedding(prompt, 512, 32),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 512, 32), height=64, width=64, num_frames=frames,
        num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
