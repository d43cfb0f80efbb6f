"""Tiny random-weight pipelines of I2VGen-XL (``I2VGenXLUNet``): built from configs, offline, seconds on a CPU
(registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..tiny_parts import prompt_embedding, sd_vae


@functools.cache
def _posterior_mean_vae_class() -> type:
    """An AutoencoderKL whose encoding samples its posterior mean: I2VGen-XL samples the image latent without the
    call's generator, so a tiny pipeline with a random-posterior VAE would differ between identical calls."""
    from diffusers import AutoencoderKL

    class PosteriorMeanAutoencoderKL(AutoencoderKL):
        def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
            output = super().encode(x, return_dict=return_dict)
            posterior = output.latent_dist if return_dict else output[0]
            posterior.std = torch.zeros_like(posterior.std)  # sample() = mean + std * noise = mean
            return output

    return PosteriorMeanAutoencoderKL


def tiny_i2vgen_xl(seed: int = 0) -> Any:
    """An I2VGen-XL pipeline (``I2VGenXLUNet``: temporal attention over frames, batch [uncond, cond]), random
    weights; CLIP image encoder at 32x32."""
    from diffusers import DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = I2VGenXLUNet(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=8, attention_head_dim=4, num_attention_heads=None, norm_num_groups=2,
    )
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=8, projection_dim=8, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=8,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = I2VGenXLPipeline(
        vae=sd_vae(_posterior_mean_vae_class()), text_encoder=None, tokenizer=None, image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), unet=unet, scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def i2vgen_xl_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_i2vgen_xl` (16x16, 3 frames of 8x8 latents, 4 prompt tokens,
    guidance 5)."""

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 4, 8), negative_prompt_embeds=prompt_embedding(negative_prompt, 4, 8),
        height=16, width=16, num_frames=3, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
