"""Tiny random-weight pipelines built from configs: no download, a few seconds on a CPU.

They prove that rules are applied exactly (tests, ``attnsteer run --model tiny-wan``); they make
no meaningful videos. Text prompts become deterministic pseudo-embeddings of the string, since
no tokenizer or text encoder can be loaded offline.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import ConfigError


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' notices while a tiny pipeline is built (e.g. that torchvision is absent and the
    PIL image processor is used) say nothing about the tiny model; the verbosity is restored after."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


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


test_image.__test__ = False  # a helper, not a test: pytest must not collect it where a test module imports it


def _clip_image_processor_class() -> Any:
    """The PIL CLIP image processor where transformers has it (no torchvision warning), else the default one."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def _clip_image_encoder() -> tuple[Any, Any]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPImageProcessor = _clip_image_processor_class()
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModelWithProjection(config), processor


@_quiet_transformers()
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


@_quiet_transformers()
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


@_quiet_transformers()
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


def _text_mask(text: str, length: int) -> torch.Tensor:
    """A [1, length] attention mask with one valid token per word plus one, the rest padding (as a tokenizer pads)."""
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[:, : min(length, len(text.split()) + 1)] = 1
    return mask


@_quiet_transformers()
def tiny_hunyuan(seed: int = 0, image_condition_type: str = "latent_concat") -> Any:
    """A HunyuanVideo I2V pipeline (joint video+text attention, branch by forward order), random weights.

    ``image_condition_type`` is "latent_concat" (image latent and mask concatenated by channel) or
    "token_replace" (the image latent replaces frame 0)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4,
    )
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=9 if image_condition_type == "latent_concat" else 4, out_channels=4, num_attention_heads=2,
        attention_head_dim=10, num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=image_condition_type,
    )
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        image_processor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan_call_kwargs(
    prompt: str = "a cat", negative_prompt: str = "", guidance_scale: float | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_hunyuan` (64x64, 9 frames = 3 latent frames of 4x4 tokens,
    8 text tokens with padding, true CFG on: two forwards per step).

    ``guidance_scale`` sets ``true_cfg_scale`` (classifier-free guidance); the pipeline's own
    ``guidance_scale`` is the embedded (distilled) guidance, overridable by name as ``overrides``."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 16), prompt_attention_mask=_text_mask(prompt, 8),
        pooled_prompt_embeds=prompt_embedding("pooled: " + prompt, 1, 8)[:, 0],
        negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 16),
        negative_prompt_attention_mask=_text_mask(negative_prompt, 8),
        negative_pooled_prompt_embeds=prompt_embedding("pooled: " + negative_prompt, 1, 8)[:, 0],
        height=64, width=64, num_frames=9, num_inference_steps=4,
        true_cfg_scale=3.0 if guidance_scale is None else guidance_scale, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


@_quiet_transformers()
def tiny_hunyuan15(seed: int = 0) -> Any:
    """A HunyuanVideo 1.5 I2V pipeline (video then image/byT5/text tokens, guider contexts), random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_refiner_layers=1,
        text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=16, rope_axes_dim=(2, 2, 4), target_size=64,
    )
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
    ))
    pipe = HunyuanVideo15ImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=None, tokenizer_2=None,
        guider=ClassifierFreeGuidance(guidance_scale=6.0), image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan15_call_kwargs(
    prompt: str = "a cat", negative_prompt: str = "", guidance_scale: float | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_hunyuan15` (64x64 image, 9 frames = 3 latent frames of 4x4
    tokens, then 16 image + 4 byT5 + 8 text tokens; the byT5 glyph tokens are all padding, as for a prompt without
    quoted text)."""
    if guidance_scale is not None:
        raise ConfigError("HunyuanVideo 1.5 pipelines take the guidance scale from their guider: set pipe.guider")
    kwargs: dict[str, Any] = dict(num_frames=9, num_inference_steps=4, output_type="np")
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds"] = prompt_embedding(text, 8, 16)
        kwargs[f"{prefix}prompt_embeds_mask"] = _text_mask(text, 8)
        kwargs[f"{prefix}prompt_embeds_2"] = torch.zeros(1, 4, 8)
        kwargs[f"{prefix}prompt_embeds_mask_2"] = torch.zeros(1, 4, dtype=torch.long)
    kwargs.update(overrides)
    return kwargs


@_quiet_transformers()
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


def _cogvideox_vae() -> Any:
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )


def _cogvideox_i2v(transformer: Any) -> Any:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=_cogvideox_vae(), transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@_quiet_transformers()
def tiny_cogvideox(seed: int = 0) -> Any:
    """A CogVideoX I2V pipeline (joint text+video attention, batch [uncond, cond]), random weights."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=2, sample_height=8, sample_width=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True,
    )
    return _cogvideox_i2v(transformer)


@_quiet_transformers()
def tiny_cogvideox15(seed: int = 0) -> Any:
    """A CogVideoX 1.5 I2V pipeline (temporal patch ``patch_size_t=2``: the pipeline pads the latent frames to an
    even count, and one token frame holds two latent frames; ``ofs`` embedding), random weights."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
        ofs_embed_dim=2, text_embed_dim=32, num_layers=2, sample_height=8, sample_width=8, sample_frames=9,
        patch_size=2, patch_size_t=2, patch_bias=False, temporal_compression_ratio=4, max_text_seq_length=16,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
    )
    return _cogvideox_i2v(transformer)


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


def cogvideox15_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_cogvideox15` (64x64, 17 frames = 5 latent frames, padded to
    6 = 3 token frames of 4x4 tokens, 16 text tokens)."""
    return cogvideox_call_kwargs(prompt, negative_prompt, **{"num_frames": 17, **overrides})


def _ltx_components(seed: int) -> dict[str, Any]:
    """Transformer, VAE and scheduler shared by the tiny LTX pipelines (VAE: 4x spatial, 4x temporal compression)."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

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
    return dict(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())


@_quiet_transformers()
def tiny_ltx(seed: int = 0) -> Any:
    """An LTX-Video I2V pipeline (per-token timesteps, batch [uncond, cond]), random weights."""
    from diffusers import LTXImageToVideoPipeline

    pipe = LTXImageToVideoPipeline(tokenizer=None, text_encoder=None, **_ltx_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@_quiet_transformers()
def tiny_ltx_condition(seed: int = 0) -> Any:
    """An ``LTXConditionPipeline`` (conditions at frames > 0 become extra tokens before the video, positions
    from ``video_coords``), random weights. Called with ``image=...`` it conditions latent frame 0."""
    from diffusers import LTXConditionPipeline

    pipe = LTXConditionPipeline(tokenizer=None, text_encoder=None, **_ltx_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_ltx` or :func:`tiny_ltx_condition` (32x32, 9 frames =
    3 latent frames of 8x8 tokens, 4 steps)."""
    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 16, 32), prompt_attention_mask=torch.ones(1, 16, dtype=torch.long),
        negative_prompt_embeds=prompt_embedding(negative_prompt, 16, 32),
        negative_prompt_attention_mask=torch.ones(1, 16, dtype=torch.long),
        height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=3.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


from . import tiny_families_a as _a  # noqa: E402  (its builders import this module's helpers when called)
from . import tiny_families_b as _b  # noqa: E402  (it uses the helpers above)
from . import tiny_families_d as _d  # noqa: E402  (it uses the helpers above)
from . import tiny_families_e as _e  # noqa: E402
from .tiny_families_c import (  # noqa: E402
    animatediff_call_kwargs,
    anyflow_call_kwargs,
    i2vgen_xl_call_kwargs,
    latte_call_kwargs,
    motif_video_call_kwargs,
    tiny_animatediff,
    tiny_anyflow,
    tiny_i2vgen_xl,
    tiny_latte,
    tiny_motif_video,
)

TINY_MODELS: dict[str, tuple[Callable[..., Any], Callable[..., dict[str, Any]]]] = {
    "tiny-wan": (tiny_wan, wan_call_kwargs),
    "tiny-cogvideox": (tiny_cogvideox, cogvideox_call_kwargs),
    "tiny-wan22": (tiny_wan22, wan_call_kwargs),
    "tiny-ltx": (tiny_ltx, ltx_call_kwargs),
    "tiny-cogvideox15": (tiny_cogvideox15, cogvideox15_call_kwargs),
    "tiny-ltx-condition": (tiny_ltx_condition, ltx_call_kwargs),
    "tiny-wan-ti2v": (tiny_wan_ti2v, wan_call_kwargs),
    "tiny-hunyuan": (tiny_hunyuan, hunyuan_call_kwargs),
    "tiny-hunyuan-token-replace": (functools.partial(tiny_hunyuan, image_condition_type="token_replace"),
                                   hunyuan_call_kwargs),
    "tiny-hunyuan15": (tiny_hunyuan15, hunyuan15_call_kwargs),
    "tiny-svd": (tiny_svd, svd_call_kwargs),
    "tiny-mochi": (_a.tiny_mochi, _a.mochi_call_kwargs),
    "tiny-allegro": (_a.tiny_allegro, _a.allegro_call_kwargs),
    "tiny-easyanimate": (_a.tiny_easyanimate, _a.easyanimate_call_kwargs),
    "tiny-easyanimate-inpaint": (_a.tiny_easyanimate_inpaint, _a.easyanimate_inpaint_call_kwargs),
    "tiny-consisid": (_a.tiny_consisid, _a.consisid_call_kwargs),
    "tiny-latte": (tiny_latte, latte_call_kwargs),
    "tiny-animatediff": (tiny_animatediff, animatediff_call_kwargs),
    "tiny-motif-video": (tiny_motif_video, motif_video_call_kwargs),
    "tiny-i2vgen-xl": (tiny_i2vgen_xl, i2vgen_xl_call_kwargs),
    "tiny-anyflow": (tiny_anyflow, anyflow_call_kwargs),
    "tiny-cosmos2": (_a.tiny_cosmos2, _a.cosmos2_call_kwargs),
    "tiny-kandinsky5-i2v": (_a.tiny_kandinsky5_i2v, _a.kandinsky5_call_kwargs),
    "tiny-wan-vace": (_b.tiny_wan_vace, _b.wan_vace_call_kwargs),
    "tiny-chronoedit": (_b.tiny_chronoedit, _b.chronoedit_call_kwargs),
    "tiny-skyreels-v2-df": (_b.tiny_skyreels_v2_df, _b.skyreels_v2_df_call_kwargs),
    "tiny-framepack": (_b.tiny_framepack, _b.framepack_call_kwargs),
    "tiny-ltx2": (_b.tiny_ltx2, _b.ltx2_call_kwargs),
    "tiny-wan-animate": (_b.tiny_wan_animate, _b.wan_animate_call_kwargs),
    "tiny-kandinsky6": (_e.tiny_kandinsky6, _e.kandinsky6_call_kwargs),
    "tiny-helios": (_d.tiny_helios, _d.helios_call_kwargs),
    "tiny-lucy-edit": (_d.tiny_lucy_edit, _d.lucy_edit_call_kwargs),
    "tiny-easyanimate-control": (_d.tiny_easyanimate_control, _d.easyanimate_control_call_kwargs),
    "tiny-kandinsky5-t2v": (_d.tiny_kandinsky5_t2v, _a.kandinsky5_call_kwargs),
}


def build_tiny(name: str, seed: int = 0) -> tuple[Any, Callable[..., dict[str, Any]]]:
    """The tiny pipeline called ``name`` and the function that makes its call arguments."""
    if name not in TINY_MODELS:
        raise ConfigError(f"model {name!r} is not a built-in tiny model; choose one of {sorted(TINY_MODELS)}")
    build, call_kwargs = TINY_MODELS[name]
    with _quiet_transformers():
        return build(seed), call_kwargs


def word_tokenizer(vocabulary: str = "a an the cat dog red blue ball grass runs jumps on in left right") -> Any:
    """A tiny word-level fast tokenizer built offline (one token per known word, ``[UNK]`` otherwise),
    with character offsets, so ``at.words(...)`` works on the tiny pipelines' prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(vocabulary.split()))}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
