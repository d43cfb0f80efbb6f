"""Tiny random-weight pipelines of Stable Video Diffusion (temporal attention over frames): built from configs,
offline, seconds on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import quiet_transformers


@quiet_transformers()
def tiny_svd(seed: int = 0) -> Any:
    """A Stable Video Diffusion pipeline (temporal attention over frames, batch [uncond, cond]), random weights."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), block_out_channels=(32, 32),
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=12, layers_per_block=1,
        cross_attention_dim=16, num_attention_heads=(2, 2), num_frames=4,
    )
    vae = AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D",) * 3, block_out_channels=(32, 32, 32), layers_per_block=1,
        latent_channels=4,
    )
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(  # SVD resizes the image to 224 for CLIP
        hidden_size=16, projection_dim=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=224, patch_size=56,
    ))
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
        interpolation_type="linear", sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
        timestep_type="continuous", use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def svd_call_kwargs(
    prompt: str = "", negative_prompt: str = "", guidance_scale: float | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_svd` (32x32, 4 frames, 8x8 latents, 4 steps).

    SVD takes no prompt (ignored); ``guidance_scale`` sets ``max_guidance_scale``, the end of its per-frame ramp."""
    kwargs: dict[str, Any] = dict(
        height=32, width=32, num_frames=4, num_inference_steps=4, min_guidance_scale=1.0,
        max_guidance_scale=3.0 if guidance_scale is None else guidance_scale, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
