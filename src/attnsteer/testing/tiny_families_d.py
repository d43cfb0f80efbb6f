"""Tiny random-weight pipelines of Helios, Lucy Edit, EasyAnimate control and Kandinsky 5 text-to-video (see
:mod:`.tiny`, whose ``TINY_MODELS`` lists them)."""

from __future__ import annotations

import functools
from typing import Any

import torch


def _wan_vae() -> Any:
    """The tiny Wan VAE (z_dim 16, /8 in space, /4 in time)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def tiny_helios(seed: int = 0) -> Any:
    """A Helios pipeline (chunked generation with long/mid/short history in the self-attention sequence, history keys
    amplified, text in cross-attention, one forward per branch), random weights."""
    from diffusers import HeliosPipeline, HeliosScheduler, HeliosTransformer3DModel

    torch.manual_seed(seed)
    transformer = HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=16, freq_dim=32, ffn_dim=16, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_dim=(4, 4, 4), has_multi_term_memory_patch=True, guidance_cross_attn=True, zero_history_timestep=True,
        is_amplify_history=True,
    )
    with torch.no_grad():  # distinct per-head history key factors (the default init makes them all equal)
        for block in transformer.blocks:
            block.attn1.history_key_scale.copy_(torch.linspace(-1.0, 2.0, block.attn1.heads))
    pipe = HeliosPipeline(
        tokenizer=None, text_encoder=None, vae=_wan_vae(), transformer=transformer,
        scheduler=HeliosScheduler(stage_range=[0, 1], stages=1, use_dynamic_shifting=True),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def helios_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_helios` (32x32, one chunk of 2 latent frames of 2x2 tokens
    after history sizes [4, 2, 1]: 1 long and 1 mid history token, then the kept first frame and one 1x history
    frame; 8 text tokens, guidance 5)."""
    from .tiny import prompt_embedding  # here: tiny.py imports this module

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 16), negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 16),
        height=32, width=32, num_frames=5, num_latent_frames_per_chunk=2, history_sizes=[4, 2, 1],
        num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


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
        tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=experts[0], transformer_2=experts[1], boundary_ratio=0.6,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lucy_edit_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_lucy_edit` (64x64, 9 frames = 3 latent frames of 4x4 tokens;
    the source video is the built-in test image, still)."""
    from .tiny import prompt_embedding, test_image

    frames, size = overrides.pop("num_frames", 9), overrides.get("height", 64)
    kwargs: dict[str, Any] = dict(
        video=[test_image(size)] * frames, prompt_embeds=prompt_embedding(prompt, 512, 32),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 512, 32), height=64, width=64, num_frames=frames,
        num_inference_steps=4, guidance_scale=5.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


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

    from .tiny_families_a import _easyanimate_transformer, _magvit_vae, _quiet

    torch.manual_seed(seed)
    return _quiet(_easyanimate_control_class()(
        vae=_magvit_vae(), text_encoder=None, tokenizer=None, transformer=_easyanimate_transformer(4 + 4 + 4),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    ))


def easyanimate_control_call_kwargs(prompt: str = "a cat", negative_prompt: str = "",
                                    **overrides: Any) -> dict[str, Any]:
    """:func:`~.tiny_families_a.easyanimate_call_kwargs` plus a ``control_video`` (the built-in test image, still)
    and the test image as ``ref_image``, [1, 3, frames, H, W] tensors in [0, 1]."""
    import numpy as np

    from .tiny import test_image
    from .tiny_families_a import easyanimate_call_kwargs

    kwargs = easyanimate_call_kwargs(prompt, negative_prompt, **overrides)
    size = kwargs["height"]
    pixels = torch.from_numpy(np.asarray(test_image(size), dtype=np.float32) / 255).permute(2, 0, 1)[None, :, None]
    kwargs.setdefault("control_video", pixels.expand(-1, -1, kwargs["num_frames"], -1, -1).contiguous())
    kwargs.setdefault("ref_image", pixels)
    return kwargs


def tiny_kandinsky5_t2v(seed: int = 0) -> Any:
    """The Kandinsky 5 text-to-video pipeline on :func:`~.tiny_families_a.tiny_kandinsky5_i2v`'s components (the
    visual condition is zeros; video-only self-attention, text cross-attention; conditional then unconditional
    forward per step), random weights."""
    from diffusers import Kandinsky5T2VPipeline

    from .tiny_families_a import _quiet, tiny_kandinsky5_i2v

    return _quiet(Kandinsky5T2VPipeline(**tiny_kandinsky5_i2v(seed).components))
