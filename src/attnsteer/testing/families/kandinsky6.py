"""Tiny random-weight pipelines of Kandinsky 6 text/image-to-video+audio: built from configs, offline, seconds on a CPU
(registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import prompt_embedding


def tiny_kandinsky6(seed: int = 0) -> Any:
    """A Kandinsky 6 text/image-to-video+audio pipeline (separate video and audio self-attention, text
    cross-attention per stream, video<->audio cross-attention; a conditional then an unconditional forward
    per step under ``cache_context``; the image, if any, appended as the last latent frame), random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        Kandinsky6TI2VAPipeline,
        Kandinsky6Transformer3DModel,
        MMAudioVAE,
        MMAudioVocoder,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4,
    )
    transformer = Kandinsky6Transformer3DModel(  # the released checkpoints' switches: padding, cross RoPE and gates
        in_visual_dim=4, out_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=16, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(2, 2, 4), visual_cond=True,
        in_audio_dim=4, out_audio_dim=4, text_token_padding=True, ca_rope=True, cross_gates=True,
        fix_modulation=True, visual_token_type_num_embeddings=2,
    )
    # 1600 Hz audio, latent hop 2 x 50 samples: a 9-frame clip at 24 fps has 6 audio latent tokens
    audio_vae = MMAudioVAE(mel_bins=8, latent_channels=4, hidden_channels=8, channel_multipliers=(1,),
                           layers_per_block=1, sample_rate=1600, n_fft=64, hop_length=50)
    vocoder = MMAudioVocoder(num_mels=8, upsample_initial_channel=8, upsample_rates=(2,), upsample_kernel_sizes=(4,),
                             resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    pipe = Kandinsky6TI2VAPipeline(
        transformer=transformer, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), audio_vae=audio_vae, vocoder=vocoder,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def kandinsky6_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_kandinsky6`: 32x64 pixels, 9 frames = 3 latent frames of 2x4
    tokens (4 with an image), 6 audio latent tokens, 8 Qwen text tokens in cross-attention, a pooled CLIP
    embedding, CFG on, 4 steps."""

    kwargs: dict[str, Any] = dict(height=32, width=64, num_frames=9, frame_rate=24.0, num_inference_steps=4,
                                  guidance_scale=4.0, max_sequence_length=8, output_type="np")
    for prefix, text in (("", prompt), ("negative_", negative_prompt)):
        kwargs[f"{prefix}prompt_embeds"] = prompt_embedding(text, 8, 32)
        kwargs[f"{prefix}pooled_prompt_embeds"] = prompt_embedding("pooled: " + text, 1, 16)[:, 0]
    kwargs.update(overrides)
    return kwargs
