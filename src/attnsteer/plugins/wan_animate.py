"""Wan 2.2 Animate (``WanAnimateTransformer3DModel``; ``WanAnimatePipeline``): character animation and replacement.

Layout facts:

- Wan's blocks: self-attention ``blocks[i].attn1`` over video tokens only, frame-major after a (1, 2, 2)
  patch embedding; ``blocks[i].attn2`` is cross-attention to the CLIP image tokens of the character and
  the text (the text is the last 512 keys).
- The latent input has T + 1 frames: latent frame 0 is the reference (character) image; frames 1..T are
  the segment being generated, to which the pose latents are added after the patch embedding; in later
  segments their first frames are conditioned (by channel concat) on the previous segment's last frames.
  The pipeline generates long videos segment by segment (``segment_frame_length``), one denoising loop
  per segment: steps restart with each segment.
- The face adapter ``face_adapter[j]`` (after every ``inject_face_latents_blocks``-th block) is
  cross-attention from each latent frame's video tokens to that frame's face motion tokens (frames
  folded into the batch); it is neither self-attention nor text cross-attention and is not hooked: rules
  never reach it.
- Reference frame: latent frame 0 (the character image).
- Guidance: one forward per branch under ``cache_context("cond"/"uncond")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout


class WanAnimateAdapter(Adapter):
    family = "wan-animate"
    model_classes = ("WanAnimateTransformer3DModel",)
    self_attention = r"blocks\.\d+\.attn1"
    cross_attention = r"blocks\.\d+\.attn2"
    text = "cross"
    branches = "separate-forwards"
    tiny_models = ("tiny-wan-animate",)
    tested = ("rules reach blocks.*.attn1 and (attention='cross') blocks.*.attn2 only, never the face adapter's "
              "per-frame cross-attention")

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, frame-major, patch (1, 2, 2): the character image (frame 0), then the segment's frames."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        return self.token_layout(frames // p_t, (height // p_h, width // p_w))
