"""Tiny random-weight pipelines for Mochi, Allegro, EasyAnimate, ConsisID, Cosmos and Kandinsky 5,
built from configs offline (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`).

Text comes as ``prompt_embeds`` (pseudo-embeddings of the string): no tokenizer or text encoder is
loaded. They prove that rules are applied exactly; they make no meaningful videos.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _text(text: str, length: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A pseudo-embedding of ``text`` [1, length, dim] and its padded mask [1, length] (tiny.py's helpers)."""
    from .tiny import _text_mask, prompt_embedding

    return prompt_embedding(text, length, dim), _text_mask(text, length)


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_mochi(seed: int = 0) -> Any:
    """A Mochi text-to-video pipeline (joint video+text attention, one SDPA call per batch row), random weights."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(seed)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16,
    )
    vae = AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
    )
    return _quiet(MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                tokenizer=None, transformer=transformer))


def mochi_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_mochi` (32x32, 13 frames = 3 latent frames of 2x2 tokens,
    8 text tokens padded per prompt, 4 steps)."""
    (embeds, mask), (negative, negative_mask) = _text(prompt, 8, 32), _text(negative_prompt, 8, 32)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask, height=32, width=32, num_frames=13, num_inference_steps=4,
        guidance_scale=4.5, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_allegro(seed: int = 0) -> Any:
    """An Allegro text-to-video pipeline (video-only self-attention, text cross-attention, batch [uncond, cond]),
    random weights."""
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    torch.manual_seed(seed)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=2,
        cross_attention_dim=24, sample_width=8, sample_height=8, sample_frames=8, caption_channels=24,
    )
    vae = AutoencoderKLAllegro(
        in_channels=3, out_channels=3, down_block_types=("AllegroDownBlock3D",) * 4,
        up_block_types=("AllegroUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    vae.enable_tiling()  # diffusers' Allegro VAE decodes only tiled
    return _quiet(AllegroPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                  scheduler=DDIMScheduler()))


def allegro_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_allegro` (32x32, 9 frames = 3 latent frames of 2x2 tokens,
    8 text tokens in cross-attention, padded per prompt, 4 steps)."""
    (embeds, mask), (negative, negative_mask) = _text(prompt, 8, 24), _text(negative_prompt, 8, 24)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask, height=32, width=32, num_frames=9, num_inference_steps=4,
        guidance_scale=6.0, max_sequence_length=8, output_type="np", negative_prompt=None,  # its default is ""
    )
    kwargs.update(overrides)
    return kwargs


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
    return _quiet(EasyAnimatePipeline(vae=_magvit_vae(), text_encoder=None, tokenizer=None,
                                      transformer=_easyanimate_transformer(4),
                                      scheduler=FlowMatchEulerDiscreteScheduler()))


def easyanimate_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_easyanimate` (32x32, 9 frames = 3 latent frames of 2x2
    tokens, 8 text tokens, 4 steps)."""
    (embeds, mask), (negative, negative_mask) = _text(prompt, 8, 16), _text(negative_prompt, 8, 16)
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
    return _quiet(EasyAnimateInpaintPipeline(vae=_magvit_vae(), text_encoder=None, tokenizer=None,
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

    from .tiny import test_image

    video, mask = get_image_to_video_latent(image or test_image(size), None, num_frames, (size, size))
    return {"video": video, "mask_video": mask}


def tiny_consisid(seed: int = 0) -> Any:
    """A ConsisID pipeline (CogVideoX I2V with face features; joint text+video attention, batch [uncond, cond]),
    random weights."""
    from diffusers import AutoencoderKLCogVideoX, ConsisIDPipeline, ConsisIDTransformer3DModel, DDIMScheduler

    torch.manual_seed(seed)
    transformer = ConsisIDTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True, cross_attn_interval=1, is_kps=False, is_train_face=True,
        cross_attn_dim_head=1, cross_attn_num_heads=1, LFE_id_dim=2, LFE_vit_dim=2, LFE_depth=5, LFE_dim_head=8,
        LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=1, LFE_output_dim=21, LFE_ff_mult=1, LFE_num_scale=1,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    return _quiet(ConsisIDPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                   scheduler=DDIMScheduler()))


def consisid_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_consisid` (32x32, 9 frames = 3 latent frames of 2x2 tokens,
    8 text tokens, constant face features, 4 steps)."""
    from .tiny import prompt_embedding

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 32),
        height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=6.0, max_sequence_length=8,
        use_dynamic_cfg=False, id_vit_hidden=[torch.ones(1, 2, 2)], id_cond=torch.ones(1, 2), output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


class PassThroughSafetyChecker(torch.nn.Module):
    """Stands in for the Cosmos guardrail in random-weight test pipelines (which make no meaningful video):
    every text and video passes. diffusers' own fast tests do the same; real checkpoints use the guardrail."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_where", torch.zeros(1), persistent=False)  # tells the pipeline its device and dtype

    @property
    def device(self) -> torch.device:
        return self._where.device

    @property
    def dtype(self) -> torch.dtype:
        return self._where.dtype

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: Any) -> Any:
        return frames


def tiny_cosmos2(seed: int = 0) -> Any:
    """A Cosmos 2 video-to-world pipeline (image -> conditioning latent frame 0; video-only self-attention, text
    cross-attention; conditional then unconditional forward per step), random weights."""
    from diffusers import (
        AutoencoderKLWan,
        Cosmos2VideoToWorldPipeline,
        CosmosTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(  # no padding-mask channel: diffusers resizes it with torchvision
        in_channels=16 + 1, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type="learnable",
    )
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return _quiet(Cosmos2VideoToWorldPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), safety_checker=PassThroughSafetyChecker(),
    ))


def cosmos2_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_cosmos2` (32x32, 9 frames = 3 latent frames of 2x2 tokens,
    8 text tokens in cross-attention, 4 steps)."""
    from .tiny import prompt_embedding

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 32),
        height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=3.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_kandinsky5_i2v(seed: int = 0) -> Any:
    """A Kandinsky 5 image-to-video pipeline (the image replaces latent frame 0; video-only self-attention, text
    cross-attention; conditional then unconditional forward per step), random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        Kandinsky5I2VPipeline,
        Kandinsky5Transformer3DModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4,
    )
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(1, 1, 2), visual_cond=True,
        attention_type="regular",
    )
    for name, param in transformer.named_parameters():  # the modulations start at zero (gates shut): open them
        if "modulation" in name:
            torch.nn.init.normal_(param, std=0.1)
    return _quiet(Kandinsky5I2VPipeline(
        transformer=transformer, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    ))


def kandinsky5_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_kandinsky5_i2v` (32x32, 17 frames = 5 latent frames of 2x2
    tokens, 8 Qwen text tokens in cross-attention, a pooled CLIP embedding, 4 steps). The pipeline renormalises
    the first 4 latent frames by the next ones after denoising: fewer than 5 latent frames make NaNs."""
    from .tiny import prompt_embedding

    kwargs: dict[str, Any] = dict(height=32, width=32, num_frames=17, num_inference_steps=4, guidance_scale=4.0,
                                  max_sequence_length=8, output_type="np")
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds_qwen"] = prompt_embedding(text, 8, 32)
        kwargs[f"{prefix}prompt_embeds_clip"] = prompt_embedding("pooled: " + text, 1, 16)[:, 0]
        kwargs[f"{prefix}prompt_cu_seqlens"] = torch.tensor([0, 8], dtype=torch.int32)
    kwargs.update(overrides)
    return kwargs


def tiny_cosmos25(seed: int = 0) -> Any:
    """A Cosmos Predict 2.5 pipeline (one latent input for the conditional and the unconditional forward of a step;
    the model is fed sigma), random weights. Not a CLI model: diffusers converts its ``image`` with torchvision, which
    attnsteer does not require; call it with :func:`cosmos25_call_kwargs` (a still video as a tensor)."""
    from diffusers import (
        AutoencoderKLWan,
        Cosmos2_5_PredictBasePipeline,
        CosmosTransformer3DModel,
        UniPCMultistepScheduler,
    )

    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(  # no padding-mask channel: diffusers resizes it with torchvision
        in_channels=16 + 1, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type="learnable",
    )
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return _quiet(Cosmos2_5_PredictBasePipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae, scheduler=scheduler,
        safety_checker=PassThroughSafetyChecker(),
    ))


def cosmos25_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """:func:`cosmos2_call_kwargs` plus ``video``: the test image as a still [1, 3, T, H, W] tensor in [-1, 1] (passed
    as a tensor, it skips the torchvision conversion), of which latent frame 0 conditions the generation."""
    from .tiny import test_image

    kwargs = cosmos2_call_kwargs(prompt, negative_prompt, **overrides)
    if "video" not in overrides:
        pixels = torch.from_numpy(np.asarray(test_image(kwargs["height"]), dtype=np.float32))
        frame = pixels.permute(2, 0, 1)[None, :, None] / 127.5 - 1  # [1, 3, 1, H, W]
        kwargs["video"] = frame.expand(-1, -1, kwargs["num_frames"], -1, -1).contiguous()
        kwargs.setdefault("num_latent_conditional_frames", 1)
    return kwargs
