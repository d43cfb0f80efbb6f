"""Tiny random-weight pipelines of ConsisID (identity-preserving text-to-video): built from configs, offline, seconds
on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import no_progress_bar, prompt_embedding


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
    return no_progress_bar(ConsisIDPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                   scheduler=DDIMScheduler()))


def consisid_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_consisid` (32x32, 9 frames = 3 latent frames of 2x2 tokens,
    8 text tokens, constant face features, 4 steps)."""

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 32),
        height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=6.0, max_sequence_length=8,
        use_dynamic_cfg=False, id_vit_hidden=[torch.ones(1, 2, 2)], id_cond=torch.ones(1, 2), output_type="np",
    )
    kwargs.update(overrides)
    return kwargs
