"""Tiny random-weight pipelines of the Latte, AnimateDiff, Motif-Video, I2VGen-XL and AnyFlow families (see
:mod:`.tiny`, whose ``TINY_MODELS`` lists them).

Text-to-video pipelines take no image, but every built-in tiny model is called with one (the CLI's
``--image``, the family battery): :func:`text_to_video` wraps such a pipeline class so that the
``image`` argument is dropped, documented on the class, and nothing else changes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..errors import ConfigError


@functools.cache
def text_to_video(pipeline_class: type) -> type:
    """A subclass of the text-to-video ``pipeline_class`` whose ``__call__`` accepts and ignores ``image``."""

    def __call__(self, *args: Any, image: Any = None, **kwargs: Any) -> Any:
        return pipeline_class.__call__(self, *args, **kwargs)

    doc = (f"{pipeline_class.__name__} for the built-in tiny models: text-to-video, so the ``image`` every "
           "tiny model is called with is ignored.")
    # attnsteer_takes_image: the CLI refuses --image here, as for the pipeline class itself
    return type(f"Tiny{pipeline_class.__name__}", (pipeline_class,),
                {"__call__": __call__, "__doc__": doc, "attnsteer_takes_image": False})


def tiny_latte(seed: int = 0) -> Any:
    """A Latte pipeline (spatial and temporal attention as separate calls, batch [uncond, cond]), random weights."""
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    torch.manual_seed(seed)
    transformer = LatteTransformer3DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=16,
        in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        video_length=3,  # the temporal position embedding has this many frames: calls must use as many
    )
    pipe = text_to_video(LattePipeline)(
        tokenizer=None, text_encoder=None, vae=_sd_vae(), transformer=transformer, scheduler=DDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latte_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", num_frames: int | None = None,
                      **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_latte` (16x16, 3 frames of 8x8 latents = 4x4 patches,
    8 caption tokens, guidance 5). ``num_frames`` must be 3 (the tiny model's ``video_length``)."""
    from .tiny import prompt_embedding  # here: tiny.py imports this module

    if num_frames not in (None, 3):
        raise ConfigError(f"tiny-latte makes 3 frames (its temporal position embedding has 3), "
                          f"got num_frames={num_frames}")
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 16),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 16),
        negative_prompt=None, height=16, width=16, video_length=3, num_inference_steps=4,
        guidance_scale=5.0, output_type="np", clean_caption=False, mask_feature=False,
    )
    kwargs.update(overrides)
    return kwargs


def _sd_vae(vae_class: type | None = None) -> Any:
    """A 2x-downsampling image VAE (4 latent channels) for the Stable-Diffusion-based tiny pipelines."""
    from diffusers import AutoencoderKL

    return (vae_class or AutoencoderKL)(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=2, layers_per_block=1,
    )


def tiny_animatediff(seed: int = 0) -> Any:
    """An AnimateDiff pipeline (SD UNet + MotionAdapter -> ``UNetMotionModel``, batch [uncond, cond]), random
    weights."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=2, attention_head_dim=8,
    )
    motion_adapter = MotionAdapter(block_out_channels=(16, 16), motion_layers_per_block=1, motion_norm_num_groups=2,
                                   motion_num_attention_heads=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
    pipe = text_to_video(AnimateDiffPipeline)(
        vae=_sd_vae(), text_encoder=None, tokenizer=None, unet=unet, motion_adapter=motion_adapter,
        scheduler=scheduler, feature_extractor=None, image_encoder=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def animatediff_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_animatediff` (16x16, 3 frames of 8x8 latents, 4 prompt
    tokens, guidance 5)."""
    from .tiny import prompt_embedding  # here: tiny.py imports this module

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 4, 16), negative_prompt_embeds=prompt_embedding(negative_prompt, 4, 16),
        height=16, width=16, num_frames=3, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_motif_video(seed: int = 0) -> Any:
    """A Motif-Video I2V pipeline (joint video+text attention, one dual-stream, one single-stream and one decoder
    block, guider contexts), random weights; without a text encoder it has no SigLIP image tokens."""
    from diffusers import (
        AutoencoderKLWan,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        MotifVideoImage2VideoPipeline,
        MotifVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = MotifVideoTransformer3DModel(
        in_channels=33, out_channels=16, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=2, num_decoder_layers=1, text_embed_dim=16, rope_axes_dim=(2, 2, 4),
    )
    pipe = MotifVideoImage2VideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
        transformer=transformer, guider=ClassifierFreeGuidance(guidance_scale=5.0), feature_extractor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def motif_video_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", guidance_scale: float | None = None,
                            **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_motif_video` (64x64 image, 9 frames = 3 latent frames of
    4x4 tokens, then 8 text tokens with padding)."""
    from .tiny import _text_mask, prompt_embedding  # here: tiny.py imports this module

    if guidance_scale is not None:
        raise ConfigError("Motif-Video pipelines take the guidance scale from their guider: set pipe.guider")
    kwargs: dict[str, Any] = dict(prompt=None, height=64, width=64, num_frames=9, num_inference_steps=4,
                                  output_type="np")
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds"] = prompt_embedding(text, 8, 16)
        kwargs[f"{prefix}prompt_attention_mask"] = _text_mask(text, 8)
    kwargs.update(overrides)
    return kwargs


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
        vae=_sd_vae(_posterior_mean_vae_class()), text_encoder=None, tokenizer=None, image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), unet=unet, scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def i2vgen_xl_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_i2vgen_xl` (16x16, 3 frames of 8x8 latents, 4 prompt tokens,
    guidance 5)."""
    from .tiny import prompt_embedding  # here: tiny.py imports this module

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 4, 8), negative_prompt_embeds=prompt_embedding(negative_prompt, 4, 8),
        height=16, width=16, num_frames=3, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


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
    from .tiny import prompt_embedding  # here: tiny.py imports this module

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 16), negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 16),
        height=64, width=64, num_frames=9, num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
