"""LTX-2 (``LTX2VideoTransformer3DModel``): ``LTX2Pipeline``, ``LTX2ImageToVideoPipeline``, ``LTX2ConditionPipeline``
and the other pipelines under ``diffusers.pipelines.ltx2``: joint audio-video generation.

Layout facts:

- Every block holds two streams that never share a self-attention sequence:
  ``transformer_blocks[i].attn1`` is self-attention over the video tokens only;
  ``transformer_blocks[i].audio_attn1`` is self-attention over the audio tokens only (one token per audio
  latent frame); ``attn2`` / ``audio_attn2`` are the text cross-attention of each stream; and the
  cross-modal attention is ``audio_to_video_attn`` (a2v: video queries, audio keys) and
  ``video_to_audio_attn`` (v2a: audio queries, video keys).
- attnsteer steers and records the video self-attention (``attn1``, ``attention="self"``, the default) and,
  with ``attention="cross"``, the video text cross-attention (``attn2``). The audio stream is a segment of its
  own, reached only by rules that name it (:mod:`attnsteer.contract.streams`): ``attention="audio"`` steers the audio
  self-attention (``audio_attn1``: queries and keys ``at.audio``), ``attention="a2v"`` the audio-to-video
  calls (queries the video tokens, ``at.frames[...]`` / ``at.video``; keys ``at.audio``) and
  ``attention="v2a"`` the video-to-audio calls (queries ``at.audio``; keys the video tokens). The audio tokens
  form one "audio" segment, one token per audio latent frame in time order, so ``at.audio[a:b]`` picks a time
  span (with the default config each token covers 4 mel frames of hop 160 at 16 kHz, 40 ms: the model's
  ``audio_rope`` coordinates); their time axis is not tied to video frames (``at.frames[...]`` never selects
  audio tokens). ``attention="self"`` rules (DyMoS) never reach the audio or cross-modal calls, and
  ``at.audio`` raises in the video self-attention, whose sequence holds no audio tokens. The audio text
  cross-attention (``audio_attn2``) is not hooked. Recordings (``at.inspect``) cover the video self-attention
  (and spatial maps the video text cross-attention) only.
- The video tokens are packed by the pipeline before the transformer, frame-major, one token per latent
  pixel (patch size 1); the forward's ``num_frames``, ``height`` and ``width`` give the grid.
- Reference frame: latent frame 0, the image in I2V (its tokens get timestep 0: per-token timesteps,
  the forward's timestep is their maximum).
- Guidance: one forward per step, batch [uncond, cond], under ``cache_context("cond_uncond")``; with
  spatio-temporal guidance (``stg_scale > 0``) and modality-isolation guidance (``modality_scale > 1``)
  the pipeline adds forwards under ``cache_context("uncond_stg")`` (attention perturbed in
  ``spatio_temporal_guidance_blocks``) and ``("uncond_modality")`` (a2v / v2a off: those modules
  do not run in that forward, so a2v / v2a rules have nothing to act on there). Both are guidance negatives,
  subtracted from the conditional prediction: their rows are "uncond". In a perturbed block whose self-attention
  (video or audio) is skipped (the value passes through), an active rule raises (no attention call).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..contract.branches import RowBranches, branches_from_context
from ..contract.streams import audio_video_views
from ..errors import SteeringError
from ..language.layout import TokenLayout

GUIDANCE_NEGATIVES = ("uncond_stg", "uncond_modality")


class LTX2Adapter(Adapter):
    family = "ltx2"
    model_classes = ("LTX2VideoTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    cross_attention = r"transformer_blocks\.\d+\.attn2"
    text = "cross"
    streams = {"audio": r"transformer_blocks\.\d+\.audio_attn1",
               "a2v": r"transformer_blocks\.\d+\.audio_to_video_attn",
               "v2a": r"transformer_blocks\.\d+\.video_to_audio_attn"}

    def branches(self, model: torch.nn.Module, inputs: Mapping[str, Any], context: str | None, batch_size: int,
                 pipeline: Any) -> RowBranches:
        """Batch [uncond, cond] under "cond_uncond"; every row "uncond" in the STG and modality-isolation forwards."""
        if context in GUIDANCE_NEGATIVES:
            return ("uncond",) * batch_size
        return branches_from_context(context, batch_size, pipeline)
    tiny_models = ("tiny-ltx2",)
    tested = ("the audio self-attention, a2v and v2a calls steered by attention='audio' / 'a2v' / 'v2a' rules against "
              "dense, each touching only its own calls; attention='self' rules and at.audio's refusal there; a "
              "stream kind the model lacks raises naming its kinds; at.audio on a joint audio+video layout against "
              "dense (GenericAdapter)")
    table_entries = {"self-attention modules": "`transformer_blocks\\.\\d+\\.attn1` (video only); streams "
                                               "(`Rule(attention=...)`): `audio_attn1` (\"audio\"), "
                                               "`audio_to_video_attn` (\"a2v\"), `video_to_audio_attn` (\"v2a\"); "
                                               "cross-attention `transformer_blocks\\.\\d+\\.attn2`"}

    def stream_views(self, model: torch.nn.Module, inputs: Mapping[str, Any], layout: TokenLayout) -> dict:
        """The audio stream: one "audio" segment of ``audio_hidden_states``' tokens beside the video frames."""
        return audio_video_views(layout, int(inputs["audio_hidden_states"].shape[1]))

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
