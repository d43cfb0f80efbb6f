"""Tiny random-weight pipelines of Wan Animate: built from configs, offline, seconds on a CPU (registered in
:data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import clip_image_processor_class, prompt_embedding, wan_vae


def tiny_wan_animate(seed: int = 0) -> Any:
    """A Wan 2.2 Animate pipeline (character image as latent frame 0, pose latents, face motion adapter), random
    weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanAnimatePipeline, WanAnimateTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    vae = wan_vae()
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
        image_processor=clip_image_processor_class()(crop_size=4, size=4), image_encoder=image_encoder,
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
