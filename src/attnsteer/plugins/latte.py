"""Latte (``LatteTransformer3DModel``, ``LattePipeline``): spatial and temporal attention are separate calls.

Layout facts:

- Each layer ``i`` runs a spatial block ``transformer_blocks.i`` (self-attention ``attn1`` over the
  h*w patch tokens of one frame, batch B*F; cross-attention ``attn2`` to the caption) and then a
  temporal block ``temporal_transformer_blocks.i`` (self-attention ``attn1`` over the F latent
  frames of one patch position, batch B*h*w; no cross-attention). Both are legacy ``Attention``
  with ``AttnProcessor2_0`` (F.sdpa).
- Which calls rules act on: the temporal ``attn1`` calls only, as for SVD. Their sequence is the F
  frames, one token per frame: ``TokenLayout(num_frames=F, tokens_per_frame=1)``; frame-to-frame
  rules (DyMoS, ``at.frames[i] -> at.frames[j]``) and frame maps come from them. A spatial call
  holds one frame, so no frame-to-frame rule can act there; spatial self-attention and the spatial
  cross-attention to text are left alone (rules with ``attention="cross"`` raise: no cross-attention
  call sees the video's frames).
- The temporal fold is video-major, (B*F, h*w, C) -> (B, h*w, F, C) -> (B*h*w, F, C): attention row
  r belongs to video r // (h*w) (``per_position_branches``). ``enable_temporal_attentions=False``
  makes no temporal call: nothing is steered (a session warns that its rules never applied). Block skips (STG-R) index the temporal
  blocks too.
- Latte is text-to-video: no frame holds an image. ``at.frames.reference`` is frame 0, the first frame.
- Guidance: one forward per step with the batch [uncond, cond] (prompt embeddings concatenated
  negative first), no cache context; ``do_classifier_free_guidance`` is ``guidance_scale > 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout
from .temporal import per_position_branches


class LatteAdapter(Adapter):
    family = "latte"
    model_classes = ("LatteTransformer3DModel",)
    self_attention = r"temporal_transformer_blocks\.\d+\.attn1"
    text = "cross"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-latte",)
    tested = ("temporal layers only (spatial self- and cross-attention calls unchanged, against dense); "
              "a frame-to-frame rule against dense; a cross-attention rule raises; no temporal calls: nothing "
              "steered, a warning")
    table_entries = {"reference frames": "none (text-to-video): frame 0 is the first frame"}
    block_pattern = r"temporal_transformer_blocks\.\d+"  # the blocks STG-R skips: those of the steered calls

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """The frames of the temporal calls, (videos x h x w, F): one token per latent frame."""
        return self.token_layout(inputs["hidden_states"].shape[2], None, tokens_per_frame=1)

    def attention_branches(self, branches: tuple[str, ...] | None, batch_size: int) -> tuple[str, ...] | None:
        """Each video's branch repeated over its h*w spatial positions (temporal rows are video-major)."""
        return per_position_branches(self, branches, batch_size)
