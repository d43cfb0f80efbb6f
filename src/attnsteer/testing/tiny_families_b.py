"""Tiny random-weight pipelines of more Wan-derived and joint families (VACE, ChronoEdit, SkyReels-V2 diffusion
forcing, LTX-2, HunyuanVideo Framepack): built from configs, no download, a few seconds on a CPU."""

from __future__ import annotations

from typing import Any

import torch


def prompt_embedding(text: str, length: int, dim: int) -> torch.Tensor:
    """:func:`attnsteer.testing.tiny.prompt_embedding` (imported late: tiny.py registers this module's builders)."""
    from .tiny import prompt_embedding as embedding

    return embedding(text, length, dim)


def _wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def _flow_unipc() -> Any:
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def tiny_wan_vace(seed: int = 0) -> Any:
    """A Wan VACE pipeline: two main blocks, VACE context blocks at layers 0 and 1 (control: 16 + 16 latent
    channels + 64 mask channels), random weights."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    torch.manual_seed(seed)
    vae = _wan_vae()
    transformer = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, vace_layers=[0, 1], vace_in_channels=96,
    )
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                           scheduler=_flow_unipc())
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


def tiny_chronoedit(seed: int = 0) -> Any:
    """A ChronoEdit pipeline (Wan 2.1 I2V-style, CLIP image tokens in cross-attention), random weights."""
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel

    torch.manual_seed(seed)
    vae = _wan_vae()
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, image_dim=16, added_kv_proj_dim=24,
    )
    from .tiny import _clip_image_encoder

    image_encoder, image_processor = _clip_image_encoder()
    pipe = ChronoEditPipeline(
        tokenizer=None, text_encoder=None, image_encoder=image_encoder, image_processor=image_processor,
        transformer=transformer, vae=vae, scheduler=_flow_unipc(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def chronoedit_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_chronoedit` (64x64; without temporal reasoning 5 frames =
    2 latent frames of 4x4 tokens: the input image, then the edited one)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 512, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 512, 32),
        height=64, width=64, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_skyreels_v2_df(seed: int = 0) -> Any:
    """A SkyReels-V2 diffusion-forcing image-to-video pipeline (per-frame timesteps; the image is a clean prefix
    latent frame), random weights."""
    from diffusers import SkyReelsV2DiffusionForcingImageToVideoPipeline, SkyReelsV2Transformer3DModel

    torch.manual_seed(seed)
    vae = _wan_vae()
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    pipe = SkyReelsV2DiffusionForcingImageToVideoPipeline(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=_flow_unipc(),
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


def tiny_framepack(seed: int = 0) -> Any:
    """A HunyuanVideo Framepack I2V pipeline (history latents packed into a joint video+text sequence, SigLIP image
    tokens, branch by forward order), random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoFramepackPipeline,
        HunyuanVideoFramepackTransformer3DModel,
    )
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4,
    )
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4), has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True,
    )
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
    ))
    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        image_encoder=image_encoder, feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def framepack_call_kwargs(
    prompt: str = "a cat", negative_prompt: str = "", guidance_scale: float | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_framepack` (64x64, one section of 3 latent frames of 4x4 tokens
    after the start image and one 1x history frame, 4 + 4 history 4x/2x tokens, then 16 image + 8 text tokens; true
    CFG on). ``guidance_scale`` sets ``true_cfg_scale``; the text masks are all valid unless overridden."""
    kwargs: dict[str, Any] = dict(
        height=64, width=64, num_frames=9, latent_window_size=3, num_inference_steps=4,
        true_cfg_scale=3.0 if guidance_scale is None else guidance_scale, output_type="np",
    )
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds"] = prompt_embedding(text, 8, 16)
        kwargs[f"{prefix}prompt_attention_mask"] = torch.ones(1, 8, dtype=torch.long)
        kwargs[f"{prefix}pooled_prompt_embeds"] = prompt_embedding("pooled: " + text, 1, 8)[:, 0]
    kwargs.update(overrides)
    return kwargs


def tiny_ltx2(seed: int = 0) -> Any:
    """An LTX-2 image-to-video pipeline (joint audio-video generation: separate video and audio streams with
    audio-to-video and video-to-audio cross-attention; batch [uncond, cond]), random weights."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ImageToVideoPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    torch.manual_seed(seed)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
        caption_channels=32, rope_double_precision=False, rope_type="split",
    )
    connectors = LTX2TextConnectors(
        caption_channels=32, text_proj_in_factor=2, video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8, video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split",
    )
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    )
    vocoder = LTX2Vocoder(
        in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    )
    pipe = LTX2ImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None, tokenizer=None,
        connectors=connectors, transformer=transformer, vocoder=vocoder,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx2_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_ltx2` (32x32, 5 frames = 3 latent frames of 16x16 tokens,
    16 text tokens, audio of 9 latent frames; CFG on, spatio-temporal and modality-isolation guidance off: pass
    ``stg_scale`` / ``modality_scale`` (and their ``audio_`` twins) to add their forwards)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 16, 64), prompt_attention_mask=torch.ones(1, 16, dtype=torch.long),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 16, 64),
        negative_prompt_attention_mask=torch.ones(1, 16, dtype=torch.long),
        height=32, width=32, num_frames=5, frame_rate=25.0, num_inference_steps=4, guidance_scale=3.0,
        audio_guidance_scale=3.0, stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
        image_crf=0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_wan_animate(seed: int = 0) -> Any:
    """A Wan 2.2 Animate pipeline (character image as latent frame 0, pose latents, face motion adapter), random
    weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanAnimatePipeline, WanAnimateTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .tiny import _clip_image_processor_class

    torch.manual_seed(seed)
    vae = _wan_vae()
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, latent_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", image_dim=4, added_kv_proj_dim=24, rope_max_seq_len=32,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8,
        motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
    )
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=4, intermediate_size=16,
        patch_size=1,
    ))
    pipe = WanAnimatePipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        image_processor=_clip_image_processor_class()(crop_size=4, size=4), image_encoder=image_encoder,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_animate_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_wan_animate` (64x64, one segment of 5 frames = 2 latent
    frames after the character image's: 3 frames of 4x4 tokens; grey pose and face videos)."""
    from PIL import Image

    frames = overrides.pop("num_frames", 5)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 512, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 512, 32),
        pose_video=[Image.new("RGB", (64, 64), (90, 90, 90))] * frames,
        face_video=[Image.new("RGB", (16, 16), (120, 120, 120))] * frames,
        height=64, width=64, segment_frame_length=frames, prev_segment_conditioning_frames=1, mode="animate",
        num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
