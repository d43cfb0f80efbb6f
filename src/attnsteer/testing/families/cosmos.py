"""Tiny random-weight pipelines of Cosmos 2 video-to-world and Cosmos 2.5 predict: built from configs, offline, seconds
on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..tiny_parts import no_progress_bar, prompt_embedding, test_image


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


def _cosmos_models(seed: int) -> tuple[Any, Any]:
    """The tiny Cosmos transformer and Wan VAE both Cosmos pipelines share, random weights from ``seed``."""
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(  # no padding-mask channel: diffusers resizes it with torchvision
        in_channels=16 + 1, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type="learnable",
    )
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return transformer, vae


def tiny_cosmos2(seed: int = 0) -> Any:
    """A Cosmos 2 video-to-world pipeline (image -> conditioning latent frame 0; video-only self-attention, text
    cross-attention; conditional then unconditional forward per step), random weights."""
    from diffusers import Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    transformer, vae = _cosmos_models(seed)
    return no_progress_bar(Cosmos2VideoToWorldPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), safety_checker=PassThroughSafetyChecker(),
    ))


def cosmos2_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_cosmos2` (32x32, 9 frames = 3 latent frames of 2x2 tokens,
    8 text tokens in cross-attention, 4 steps)."""

    kwargs: dict[str, Any] = dict(
        prompt_embeds=prompt_embedding(prompt, 8, 32), negative_prompt_embeds=prompt_embedding(negative_prompt, 8, 32),
        height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=3.0, output_type="np",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_cosmos25(seed: int = 0) -> Any:
    """A Cosmos Predict 2.5 pipeline (one latent input for the conditional and the unconditional forward of a step;
    the model is fed sigma), random weights. Not a CLI model: diffusers converts its ``image`` with torchvision, which
    attnsteer does not require; call it with :func:`cosmos25_call_kwargs` (a still video as a tensor)."""
    from diffusers import Cosmos2_5_PredictBasePipeline, UniPCMultistepScheduler

    transformer, vae = _cosmos_models(seed)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return no_progress_bar(Cosmos2_5_PredictBasePipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae, scheduler=scheduler,
        safety_checker=PassThroughSafetyChecker(),
    ))


def cosmos25_call_kwargs(prompt: str = "a cat", negative_prompt: str = "", **overrides: Any) -> dict[str, Any]:
    """:func:`cosmos2_call_kwargs` plus ``video``: the test image as a still [1, 3, T, H, W] tensor in [-1, 1] (passed
    as a tensor, it skips the torchvision conversion), of which latent frame 0 conditions the generation."""

    kwargs = cosmos2_call_kwargs(prompt, negative_prompt, **overrides)
    if "video" not in overrides:
        pixels = torch.from_numpy(np.asarray(test_image(kwargs["height"]), dtype=np.float32))
        frame = pixels.permute(2, 0, 1)[None, :, None] / 127.5 - 1  # [1, 3, 1, H, W]
        kwargs["video"] = frame.expand(-1, -1, kwargs["num_frames"], -1, -1).contiguous()
        kwargs.setdefault("num_latent_conditional_frames", 1)
    return kwargs
