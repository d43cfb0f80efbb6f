"""Tiny random-weight pipelines of CogVideoX and CogVideoX 1.5 image-to-video (joint text+video attention): built from
configs, offline, seconds on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import prompt_embedding, quiet_transformers


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


@quiet_transformers()
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


@quiet_transformers()
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
