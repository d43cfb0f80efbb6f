"""LTX-2 (``LTX2VideoTransformer3DModel``): ``LTX2Pipeline``, ``LTX2ImageToVideoPipeline``, ``LTX2ConditionPipeline``
and the other pipelines under ``diffusers.pipelines.ltx2``: joint audio-video generation.

Layout facts:

- Every block holds two streams that never share a self-attention sequence:
  ``transformer_blocks[i].attn1`` is self-attention over the video tokens only;
  ``transformer_blocks[i].audio_attn1`` is self-attention over the audio tokens only (one token per audio
  latent frame); ``attn2`` / ``audio_attn2`` are the text cross-attention of each stream; and the
  cross-modal attention is ``audio_to_video_attn`` (a2v: video queries, audio keys) and
  ``video_to_audio_attn`` (v2a: audio queries, video keys).
- attnsteer steers and records the video self-attention (``attn1``) and, with ``attention="cross"``, the
  video text cross-attention (``attn2``). The audio self-attention and the a2v / v2a cross-modal calls
  are not hooked: rules never reach them (they are not approximated through the video calls), and
  ``at.audio`` raises in LTX-2's self-attention, whose sequences hold no audio tokens. The "audio"
  segment kind and ``at.audio`` serve models whose audio tokens share the self-attention sequence.
- The video tokens are packed by the pipeline before the transformer, frame-major, one token per latent
  pixel (patch size 1); the forward's ``num_frames``, ``height`` and ``width`` give the grid.
- Reference frame: latent frame 0, the image in I2V (its tokens get timestep 0: per-token timesteps,
  the forward's timestep is their maximum).
- Guidance: one forward per step, batch [uncond, cond], under ``cache_context("cond_uncond")``; with
  spatio-temporal guidance (``stg_scale > 0``) and modality-isolation guidance (``modality_scale > 1``)
  the pipeline adds forwards under ``cache_context("uncond_stg")`` (attention perturbed in
  ``spatio_temporal_guidance_blocks``) and ``("uncond_modality")`` (a2v / v2a off). Both are guidance
  negatives, subtracted from the conditional prediction: their rows are "uncond". In a perturbed block
  whose self-attention is skipped (the value passes through), an active rule raises (no attention call).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import SteeringError
from ..layout import TokenLayout
from .base import Adapter
from .branches import RowBranches, branches_from_context

GUIDANCE_NEGATIVES = ("uncond_stg", "uncond_modality")


class LTX2Adapter(Adapter):
    family = "ltx2"
    model_classes = ("LTX2VideoTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    cross_attention = r"transformer_blocks\.\d+\.attn2"
    text = "cross"

    def branches(self, model: torch.nn.Module, inputs: Mapping[str, Any], context: str | None, batch_size: int,
                 pipeline: Any) -> RowBranches:
        """Batch [uncond, cond] under "cond_uncond"; every row "uncond" in the STG and modality-isolation forwards."""
        if context in GUIDANCE_NEGATIVES:
            return ("uncond",) * batch_size
        return branches_from_context(context, batch_size, pipeline)
    tiny_models = ("tiny-ltx2",)
    tested = ("only the video streams are hooked: the audio self-attention and a2v/v2a calls run unchanged under a "
              "rule, at.audio raises; at.audio on a joint audio+video layout against dense (GenericAdapter)")
    table_entries = {"self-attention modules": "`transformer_blocks\\.\\d+\\.attn1` (video only); not hooked: "
                                               "`audio_attn1` (audio self-attention), `audio_to_video_attn`, "
                                               "`video_to_audio_attn` (cross-modal); cross-attention "
                                               "`transformer_blocks\\.\\d+\\.attn2`"}

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, pre-packed frame-major, one token per latent pixel (audio attends in its own stream)."""
        grid = [inputs.get(k) for k in ("num_frames", "height", "width")]
        if any(v is None for v in grid):
            raise SteeringError(f"{type(model).__name__} was called without num_frames/height/width; attnsteer "
                                "cannot map its video tokens to frames")
        frames, height, width = (int(v) for v in grid)
        tokens = inputs["hidden_states"].shape[1]
        if frames * height * width != tokens:
            raise SteeringError(f"{type(model).__name__} got {tokens} video tokens but num_frames x height x width = "
                                f"{frames} x {height} x {width}")
        return self.token_layout(frames, (height, width))
