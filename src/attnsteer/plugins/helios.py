"""Helios (``HeliosTransformer3DModel``; ``HeliosPipeline``, ``HeliosPyramidPipeline``).

Helios generates a long video chunk by chunk (FramePack-style); each forward denoises one chunk of
``num_latent_frames_per_chunk`` latent frames with the video so far packed into the sequence as history.

Layout facts:

- Self-attention is ``blocks[i].attn1``; text sits in separate cross-attention (``blocks[i].attn2``), whose
  queries are the chunk's tokens only (``guidance_cross_attn``) or the whole sequence.
- The sequence is, in order: the long history (``latents_history_long``, padded to multiples of (4, 8, 8) and
  patched by 4x ``patch_size``), the mid history (``latents_history_mid``, padded to (2, 4, 4), patched by 2x
  ``patch_size``), the short history (``latents_history_short``, patched by ``patch_size``: the chunk's own
  token grid), then the chunk's noisy latent frames (``patch_size``). Each history is present only with its
  ``indices_latents_history_*`` (the frame positions its RoPE gets).
- As for HunyuanVideo Framepack, attnsteer's frames are the 1x-resolution frames in sequence order: the short
  history frames, then the chunk's frames; the long and mid history tokens are "condition" segments
  ``history long`` and ``history mid`` (no frame: each token covers several frames), selected by
  ``~at.video``. ``at.frames[-n:]`` selects the chunk being denoised (n = its latent frames); the short history
  frames are clean, given, and ``at.frames.generated`` includes them, as it does Framepack's 1x history.
- Reference frame: short-history frame 0 when it is the kept first frame (``keep_first_frame=True``, the
  default: its frame index precedes the long and mid history's): the start image in image-to-video, zeros in a
  text-to-video run's first chunk and the first generated latent frame afterwards. Without it, no frame is a
  reference frame.
- ``is_amplify_history`` multiplies the history tokens' keys by a learnt per-head (or scalar) factor in
  (1, 10) before the attention kernel: attnsteer sees the amplified keys, so biases add to the model's own
  logits and recordings hold the model's own weights (exact).
- HeliosPyramidPipeline denoises each chunk in stages at 1/4, 1/2 and full resolution while the history stays at
  full resolution: in the reduced stages the short history's token grid differs from the chunk's, so its frames
  cannot be layout frames; those forwards are refused (SteeringError), a single-stage run
  (``pyramid_num_inference_steps_list=[n]``) is steered. Steps restart with every chunk and every stage.
- Guidance: one forward per branch under ``cache_context("cond"/"uncond")``.
- Cross-attention rules are refused (the self-attention layout holds history segments and the cross-attention
  queries may be the chunk's tokens only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..errors import SteeringError
from ..language.layout import Segment, TokenLayout

# (segment name, input name, padding multiple of the latents, kernel multiple of patch_size), in sequence order
COMPRESSED_HISTORY = (("history long", "latents_history_long", (4, 8, 8), 4),
                      ("history mid", "latents_history_mid", (2, 4, 4), 2))


class HeliosAdapter(Adapter):
    family = "helios"
    model_classes = ("HeliosTransformer3DModel",)
    self_attention = r"blocks\.\d+\.attn1"
    cross_attention = r"blocks\.\d+\.attn2"
    text = "cross"
    branches = "separate-forwards"
    tiny_models = ("tiny-helios",)
    tested = ("a rule from the chunk to the long/mid history and the 1x history frame against dense, with amplified "
              "history keys; two text-to-video chunks restart the steps (DyMoS against dense); no kept first frame: "
              "no reference frame; a pyramid stage below full resolution and cross-attention rules raise")
    table_entries = {"reference frames": "short-history frame 0 when it is the kept first frame (the start image "
                                         "in image-to-video), else none"}

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Long and mid history tokens (condition segments), then short history and chunk frames (1x, frame-major)."""
        p_t, p_h, p_w = model.config.patch_size
        segments, position = [], 0
        for name, key, padding, factor in COMPRESSED_HISTORY:
            if _given(inputs, key):
                t, h, w = inputs[key].shape[2:]
                tokens = math.prod(math.ceil(n / pad) * pad // (factor * p)
                                   for n, pad, p in zip((t, h, w), padding, (p_t, p_h, p_w)))
                segments.append(Segment("condition", position, position + tokens, name=name))
                position += tokens
        _, _, frames, height, width = inputs["hidden_states"].shape
        grid = (height // p_h, width // p_w)
        history = 0
        if _given(inputs, "latents_history_short"):
            t, h, w = inputs["latents_history_short"].shape[2:]
            if (h // p_h, w // p_w) != grid:
                raise SteeringError(
                    f"Helios: the short history's token grid {(h // p_h, w // p_w)} differs from the chunk's {grid} "
                    "(a HeliosPyramidPipeline stage below full resolution): its frames cannot share the chunk's frame "
                    "layout; steer a single-stage run (pyramid_num_inference_steps_list=[n])"
                )
            history = t // p_t
        return TokenLayout(num_frames=history + frames // p_t, tokens_per_frame=grid[0] * grid[1],
                           video_start=position, segments=segments, grid=grid,
                           reference_frames=(0,) if history and kept_first_frame(inputs) else ())


def _given(inputs: Mapping[str, Any], key: str) -> bool:
    """Whether the forward packs the history ``key`` into its sequence (the model needs its indices too)."""
    return inputs.get(key) is not None and inputs.get(f"indices_{key}") is not None


def kept_first_frame(inputs: Mapping[str, Any]) -> bool:
    """Whether short-history frame 0 is the kept first frame: its frame index precedes every long and mid history
    frame's (``keep_first_frame=True`` puts it at index 0, before them; otherwise the short history comes last)."""
    first = int(inputs["indices_latents_history_short"][0, 0])
    others = [inputs[f"indices_{key}"][0] for _, key, _, _ in COMPRESSED_HISTORY if _given(inputs, key)]
    others = torch.cat(others) if others else torch.empty(0)
    return bool(others.numel()) and first < int(others.min())
