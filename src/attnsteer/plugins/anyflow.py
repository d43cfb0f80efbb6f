"""AnyFlow, bidirectional (``AnyFlowTransformer3DModel``, ``AnyFlowPipeline``): a Wan-style flow-map transformer.

Layout facts:

- Self-attention is ``blocks[i].attn1`` (``AnyFlowAttnProcessor`` through ``dispatch_attention_fn``);
  it sees video tokens only, frame-major after a (1, 2, 2) patch embedding. ``attn2`` is the
  cross-attention to the text (and image) embeddings; it is not hooked (rules with
  ``attention="cross"`` raise; text sits in no self-attention call).
- The transformer takes ``hidden_states`` as [B, F, C, H, W] (frames before channels) and per-frame
  timesteps ``timestep``/``r_timestep`` [B, F] (the flow map's source and target times); a forward's
  timestep is the maximum, the step's t (continuation context frames get 0).
- Reference frame: latent frame 0, the first frame (with ``video=`` continuation, the first
  ``context_length`` latent frames are the given video, clean).
- Guidance: one forward per step with the batch [uncond, cond], no cache context;
  ``do_classifier_free_guidance`` is ``guidance_scale > 1`` (the pipeline's default 1.0: no guidance).

The frame-autoregressive sibling ``AnyFlowFARTransformer3DModel`` is refused (``flex_only``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout


class AnyFlowAdapter(Adapter):
    family = "anyflow"
    model_classes = ("AnyFlowTransformer3DModel",)
    self_attention = r"blocks\.\d+\.attn1"
    text = "cross"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-anyflow",)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, frame-major, ``patch_size`` (1, 2, 2) latent pixels per token; input [B, F, C, H, W]."""
        _, frames, _, height, width = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        return self.token_layout(frames // p_t, (height // p_h, width // p_w))
