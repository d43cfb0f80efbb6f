"""Kandinsky 6 video+audio transformer (``Kandinsky6Transformer3DModel``; ``Kandinsky6TI2VAPipeline``, text- and
image-to-video with audio). The super-resolution model is refused elsewhere (:mod:`.flex_only`).

Layout facts (diffusers 0.42, ``transformer_kandinsky6.py``):

- Video, audio and text never share a self-attention sequence. Each fused block
  ``visual_transformer_blocks[i]`` holds ``video_dec_block.self_attention`` (video tokens only),
  ``audio_dec_block.self_attention`` (audio tokens only, one per audio latent step), each stream's text
  cross-attention ``video_dec_block.cross_attention`` / ``audio_dec_block.cross_attention`` (keys: that
  stream's text tokens, padding masked by ``encoder_attention_mask``), and the cross-modal calls
  ``va_cross_attention`` (video queries, audio keys) and ``av_cross_attention`` (audio queries, video keys).
  The text is encoded first by ``video_text_transformer_blocks`` / ``audio_text_transformer_blocks``
  (text-only self-attention). Every call goes through ``dispatch_attention_fn`` (F.sdpa on the native
  backend); the video self-attention has no mask and no sparse mode (the NABLA block-sparse attention is the
  super-resolution model's, refused).
- attnsteer steers and records the video self-attention (``attention="self"``, the default) and, with
  ``attention="cross"``, the video text cross-attention. The audio stream is reached only by rules that name it
  (:mod:`attnsteer.contract.streams`): ``attention="audio"`` steers the audio self-attention
  (``audio_dec_block.self_attention``: queries and keys ``at.audio``), ``attention="a2v"`` the
  ``va_cross_attention`` calls (queries the video tokens, ``at.frames[...]`` / ``at.video``, the image frame
  included in image-to-video; keys ``at.audio``) and ``attention="v2a"`` the ``av_cross_attention`` calls
  (queries ``at.audio``; keys the video tokens). None of these calls has a mask, and the transformer never pads
  the audio: ``audio_hidden_states`` [B, L, C] holds one token per audio latent step in time order (1-D RoPE
  positions 0..L-1), so the audio tokens form one "audio" segment and ``at.audio[a:b]`` picks a time span (with
  the default audio VAE, 44.1 kHz and a latent hop of 1024 samples, about 23 ms a token); their time axis is not
  tied to video frames (``at.frames[...]`` never selects audio tokens). The va / av keys are the other stream's
  hidden states before its text cross-attention (``vis_pre_ca`` / ``aud_pre_ca``): attnsteer steers the logits
  of those calls as they are. ``attention="self"`` rules (DyMoS) never reach the audio or cross-modal calls, and
  ``at.audio`` raises in the video self-attention, whose sequence holds no audio tokens. The audio text
  cross-attention (``audio_dec_block.cross_attention``) is not hooked. Without audio (``sample_audio=False``,
  no ``audio_hidden_states``) the audio and cross-modal calls do not run, so a stream rule never applies (the
  session reports it). Recordings (``at.inspect``) cover the video self-attention (and spatial maps the video
  text cross-attention) only.
- Video tokens: the latent is channels-last, ``hidden_states`` [B, T, H, W, C] (C = noisy latent, the
  always-zero condition latent and the condition mask), patch ``patch_size`` (1, 2, 2), flattened
  frame-major.
- Reference frame: image-to-video appends the clean image latent as an extra, *last* latent frame (condition
  mask 1, ``visual_token_type_ids`` 1, temporal RoPE position 0 like frame 0; the pipeline rewrites it every
  step and drops it after denoising). So the reference is the last latent frame of the self-attention
  sequence, frames 0..T-1 are the generated ones and ``at.frames[0]`` is the first generated frame.
  Text-to-video has no image: frame 0 is the first generated frame, the anchor DyMoS uses.
- Blocks (STG-R's block skip): ``visual_transformer_blocks[i]``, each fused over both streams; a skipped block
  passes the video and the audio stream through (none of its attention calls, stream calls included, run).
  Perturbed guidance (PAG, STG) guides the first output, the video prediction; the audio prediction gets the
  pipeline's plain CFG.
- Guidance: ``cache_context("cond")`` then, with ``guidance_scale > 1``, ``cache_context("uncond")`` per step
  (distilled checkpoints run the conditional forward only): the "separate-forwards" convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..contract.streams import audio_video_views
from ..errors import SteeringError
from ..language.layout import TokenLayout


class Kandinsky6Adapter(Adapter):
    family = "kandinsky6"
    model_classes = ("Kandinsky6Transformer3DModel",)
    self_attention = r"visual_transformer_blocks\.\d+\.video_dec_block\.self_attention"
    cross_attention = r"visual_transformer_blocks\.\d+\.video_dec_block\.cross_attention"
    text = "cross"
    branches = "separate-forwards"
    block_pattern = r"visual_transformer_blocks\.\d+"
    streams = {"audio": r"visual_transformer_blocks\.\d+\.audio_dec_block\.self_attention",
               "a2v": r"visual_transformer_blocks\.\d+\.va_cross_attention",
               "v2a": r"visual_transformer_blocks\.\d+\.av_cross_attention"}
    tiny_models = ("tiny-kandinsky6",)
    tested = ("image-to-video: the appended last latent frame is the reference, DyMoS against dense; the audio "
              "self-attention, va (a2v) and av (v2a) calls steered by attention='audio' / 'a2v' / 'v2a' rules against "
              "dense, each touching only its own calls, a zero stream rule the identity with a clean exit; "
              "attention='self' rules leave the audio and cross-modal calls untouched and at.audio raises there; text "
              "cross-attention with padded prompts against dense; PAG and STG-R (fused blocks pass both streams "
              "through) against the authors' combination; a batched sweep (one image per row) equals sequential runs")
    table_entries = {
        "self-attention modules": "`visual_transformer_blocks\\.\\d+\\.video_dec_block\\.self_attention` (video only); "
                                  "streams (`Rule(attention=...)`): `audio_dec_block.self_attention` (\"audio\"), "
                                  "`va_cross_attention` (\"a2v\"), `av_cross_attention` (\"v2a\"); cross-attention "
                                  "`visual_transformer_blocks\\.\\d+\\.video_dec_block\\.cross_attention`",
        "reference frames": "the last latent frame in image-to-video (the image, appended after the generated "
                            "frames); none in text-to-video: frame 0 is the first frame",
    }

    def stream_views(self, model: torch.nn.Module, inputs: Mapping[str, Any], layout: TokenLayout) -> dict:
        """The audio stream: one "audio" segment of ``audio_hidden_states``' tokens beside the video frames; none
        when the forward has no audio (its audio and cross-modal calls do not run)."""
        audio = inputs.get("audio_hidden_states")
        return {} if audio is None else audio_video_views(layout, int(audio.shape[1]))

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, frame-major from a channels-last latent, patch (1, 2, 2); image-to-video's image is the appended last frame."""
        _, frames, height, width, _ = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        num_frames = frames // p_t
        reference = self._reference_frames(model, inputs, num_frames)
        return TokenLayout(num_frames=num_frames, tokens_per_frame=(height // p_h) * (width // p_w),
                           grid=(height // p_h, width // p_w), reference_frames=reference)

    def skipped_block_output(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        """A skipped fused block (STG-R) returns its video and audio streams (``vis``, ``aud``) as its outputs."""
        return tuple(kwargs[name] if name in kwargs else args[i] for i, name in enumerate(("vis", "aud")))

    def _reference_frames(self, model: torch.nn.Module, inputs: Mapping[str, Any], num_frames: int) -> tuple[int, ...]:
        """The token frames of type 1 (the appended image) where the forward has token types, else frame 0."""
        types = inputs.get("visual_token_type_ids")
        if types is None:
            return (0,)
        marked = types != 0
        if marked.shape[1] != num_frames or not torch.equal(marked, marked[:1].expand_as(marked)):
            raise SteeringError(
                f"{type(model).__name__}: visual_token_type_ids {tuple(types.shape)} must mark the same frames of "
                f"{num_frames} in every batch row for attnsteer to know the reference frames"
            )
        reference = tuple(int(f) for f in torch.nonzero(marked[0]).flatten())
        return reference or (0,)
