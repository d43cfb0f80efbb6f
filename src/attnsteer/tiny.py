"""Tiny random-weight pipelines built from configs: no download, a few seconds on a CPU.

They prove that rules are applied exactly (tests, ``attnsteer run --model tiny-wan``); they make
no meaningful videos. Text prompts become deterministic pseudo-embeddings of the string, since
no tokenizer or text encoder can be loaded offline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch

from .errors import ConfigError


def prompt_embedding(text: str, length: int, dim: int) -> torch.Tensor:
    """A fixed [1, length, dim] embedding for ``text`` (seeded by its hash), standing in for a text encoder."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return torch.randn(1, length, dim, generator=torch.Generator().manual_seed(seed))


def test_image(size: int = 64) -> Any:
    """A deterministic RGB test image: a colour gradient with a disc, the default ``--image``."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([x, y, 1 - x * y], axis=-1)
    disc = (x - 0.35) ** 2 + (y - 0.55) ** 2 < 0.04
    rgb[disc] = (0.95, 0.8, 0.1)
    return Image.fromarray((rgb * 255).astype("uint8"))


def _clip_image_encoder() -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModelWithProjection(config), processor


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
    image_encoder, image_processor = _clip_image_encoder()
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler,
        image_encoder=image_encoder, image_processor=image_processor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


def tiny_cogvideox(seed: int = 0) -> Any:
    """A CogVideoX I2V pipeline (joint text+video attention, batch [uncond, cond]), random weights."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=2, sample_height=8, sample_width=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=CogVideoXDDIMScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cogvideox_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_cogvideox` (64x64, 9 frames = 3 latent frames, 16 text tokens)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 16, 32),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 16, 32),
        height=64, width=64, num_frames=9, num_inference_steps=4, guidance_scale=6.0, max_sequence_length=16,
        output_type="np", use_dynamic_cfg=False,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_ltx(seed: int = 0) -> Any:
    """An LTX-Video I2V pipeline (per-token timesteps, batch [uncond, cond]), random weights."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )

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
    pipe = LTXImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_ltx` (32x32, 9 frames, 4 steps)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 16, 32), prompt_attention_mask=torch.ones(1, 16, dtype=torch.long),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 16, 32),
        negative_prompt_attention_mask=torch.ones(1, 16, dtype=torch.long),
        height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=3.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


TINY_MODELS: dict[str, tuple[Callable[..., Any], Callable[..., dict[str, Any]]]] = {
    "tiny-wan": (tiny_wan, wan_call_kwargs),
    "tiny-cogvideox": (tiny_cogvideox, cogvideox_call_kwargs),
    "tiny-wan22": (tiny_wan22, wan_call_kwargs),
    "tiny-ltx": (tiny_ltx, ltx_call_kwargs),
}


def build_tiny(name: str, seed: int = 0) -> tuple[Any, Callable[..., dict[str, Any]]]:
    """The tiny pipeline called ``name`` and the function that makes its call arguments."""
    if name not in TINY_MODELS:
        raise ConfigError(f"model {name!r} is not a built-in tiny model; choose one of {sorted(TINY_MODELS)}")
    build, call_kwargs = TINY_MODELS[name]
    return build(seed), call_kwargs
