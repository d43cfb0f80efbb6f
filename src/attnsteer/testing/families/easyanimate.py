"""Tiny random-weight pipelines of EasyAnimate text-to-video, inpaint (image-to-video) and control: built from configs,
offline, seconds on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from ..tiny_parts import no_progress_bar, test_image, text_embedding


def _magvit_vae() -> Any:
    from diffusers import AutoencoderKLMagvit

    return AutoencoderKLMagvit(
        in_channels=3, out_channels=3,
        down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3,
        up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        spatial_group_norm=False,
    )


def _easyanimate_transformer(in_channels: int, **config: Any) -> Any:
    from diffusers import EasyAnimateTransformer3DModel

    return EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=in_channels, out_channels=4, time_embed_dim=2,
        text_embed_dim=16, num_layers=2, sample_width=16, sample_height=16, patch_size=2, **config,
    )


def tiny_easyanimate(seed: int = 0) -> Any:
    """An EasyAnimate text-to-video pipeline (joint text+video attention, text first, batch [uncond, cond]),
    random weights."""
    from diffusers import EasyAnimatePipeline, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    return no_progress_bar(EasyAnimatePipeline(vae=_magvit_vae(), text_encoder=None, tokenizer=None,
                                      transformer=_easyanimate_transformer(4),
                                      scheduler=FlowMatchEulerDiscreteScheduler()))


def easyanimate_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_easyanimate` (32x32, 9 frames = 3 latent frames of 2x2
    tokens, 8 text tokens, 4 steps)."""
    (embeds, mask), (negative, negative_mask) = text_embedding(prompt, 8, 16), text_embedding(negative_prompt, 8, 16)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask, height=32, width=32, num_frames=9, num_inference_steps=4,
        guidance_scale=6.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_easyanimate_inpaint(seed: int = 0) -> Any:
    """An EasyAnimate inpaint pipeline (image-to-video: mask and masked-video latents concatenated by channel;
    the image is latent frame 0), random weights; :func:`easyanimate_inpaint_call_kwargs` gives it the image."""
    from diffusers import EasyAnimateInpaintPipeline, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    # latent, mask latent, masked-video latent; the mask goes through the VAE (diffusers 0.42's direct resize
    # reads a ``cache_mag_vae`` that AutoencoderKLMagvit's config lacks)
    transformer = _easyanimate_transformer(4 + 4 + 4, resize_inpaint_mask_directly=False)
    return no_progress_bar(EasyAnimateInpaintPipeline(vae=_magvit_vae(), text_encoder=None, tokenizer=None,
                                             transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler()))


def easyanimate_inpaint_call_kwargs(prompt: str = "a cat", negative_prompt: str = "",
                                    **overrides: Any) -> dict[str, Any]:
    """:func:`easyanimate_call_kwargs` plus the ``video`` and ``mask_video`` that make :func:`tiny_easyanimate_inpaint`
    generate from the built-in test image (frame 0 kept), sized to the call's frames and pixels."""
    kwargs = easyanimate_call_kwargs(prompt, negative_prompt, **overrides)
    if "video" not in overrides:
        kwargs.update(easyanimate_image_to_video(None, kwargs["num_frames"], kwargs["height"]))
    return kwargs


def easyanimate_image_to_video(image: Any = None, num_frames: int = 9, size: int = 32) -> dict[str, Any]:
    """``video`` and ``mask_video`` arguments that make the inpaint pipeline generate from ``image`` (frame 0 kept,
    the rest generated), as diffusers' ``get_image_to_video_latent`` makes them."""
    from diffusers.pipelines.easyanimate.pipeline_easyanimate_inpaint import get_image_to_video_latent

    video, mask = get_image_to_video_latent(image or test_image(size), None, num_frames, (size, size))
    return {"video": video, "mask_video": mask}


@functools.cache
def _easyanimate_control_class() -> type:
    """``EasyAnimateControlPipeline`` made callable in diffusers 0.42, whose ``__call__`` passes ``encode_prompt`` a
    ``text_encoder_index`` it does not take (TypeError on every call) and decodes through a ``decode_latents`` it does
    not have (AttributeError unless ``output_type="latent"``): ``encode_prompt`` ignores that argument and
    ``decode_latents`` decodes as the text-to-video and inpaint pipelines do. Nothing else changes."""
    from diffusers import EasyAnimateControlPipeline

    def encode_prompt(self, *args: Any, text_encoder_index: int = 0, **kwargs: Any) -> Any:
        return EasyAnimateControlPipeline.encode_prompt(self, *args, **kwargs)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]

    doc = "EasyAnimateControlPipeline for the built-in tiny models, callable in diffusers 0.42 (see its builder)."
    return type("TinyEasyAnimateControlPipeline", (EasyAnimateControlPipeline,),
                {"encode_prompt": encode_prompt, "decode_latents": decode_latents, "__doc__": doc})


def tiny_easyanimate_control(seed: int = 0) -> Any:
    """An EasyAnimate control pipeline (control video and reference image latents concatenated by channel, the
    reference image on latent frame 0; joint text+video attention, batch [uncond, cond]), random weights; patched
    where diffusers 0.42's ``__call__`` fails (:func:`_easyanimate_control_class`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    return no_progress_bar(_easyanimate_control_class()(
        vae=_magvit_vae(), text_encoder=None, tokenizer=None, transformer=_easyanimate_transformer(4 + 4 + 4),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    ))


def easyanimate_control_call_kwargs(prompt: str = "a cat", negative_prompt: str = "",
                                    **overrides: Any) -> dict[str, Any]:
    """:func:`easyanimate_call_kwargs` plus a ``control_video`` (the built-in test image, still)
    and the test image as ``ref_image``, [1, 3, frames, H, W] tensors in [0, 1]."""
    kwargs = easyanimate_call_kwargs(prompt, negative_prompt, **overrides)
    size = kwargs["height"]
    pixels = torch.from_numpy(np.asarray(test_image(size), dtype=np.float32) / 255).permute(2, 0, 1)[None, :, None]
    kwargs.setdefault("control_video", pixels.expand(-1, -1, kwargs["num_frames"], -1, -1).contiguous())
    kwargs.setdefault("ref_image", pixels)
    return kwargs
