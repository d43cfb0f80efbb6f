"""ConsisID identity-preserving video transformer (``ConsisIDTransformer3DModel``; ``ConsisIDPipeline``),
built on CogVideoX 1.0.

Layout facts (those of CogVideoX, see :mod:`.cogvideox`):

- Self-attention is ``transformer_blocks[i].attn1`` (legacy ``Attention`` with ``CogVideoXAttnProcessor2_0``,
  which calls F.sdpa directly). It sees one joint sequence: the ``encoder_hidden_states.shape[1]`` text
  tokens first, then the video tokens, frame-major, ``patch_size`` x ``patch_size`` latent pixels per
  token, one token frame per latent frame (no temporal patch). ``hidden_states`` is [B, F, C, H, W].
- The face: the ``local_facial_extractor`` and the ``perceiver_cross_attention`` modules (every
  ``cross_attn_interval`` blocks, adding face features to the video stream between blocks) are not
  self-attention and are left alone; their keys are face tokens, not video or text.
- Reference frame: latent frame 0 (the image latent is concatenated by channel to latent frame 0;
  the other frames' image channels are zeros).
- Guidance: one forward per step, batch [uncond, cond], no cache context; the pipeline keeps
  ``do_classifier_free_guidance`` local and stores ``_guidance_scale`` (with ``use_dynamic_cfg`` it
  rewrites it after each step, to a value above 1 while guidance is on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout


class ConsisIDAdapter(Adapter):
    family = "consisid"
    model_classes = ("ConsisIDTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    text = "joint-before"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-consisid",)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Text first, then video tokens frame-major, patch 2, one token frame per latent frame (as CogVideoX 1.0)."""
        _, frames, _, height, width = inputs["hidden_states"].shape
        p = model.config.patch_size
        return self.token_layout(frames, (height // p, width // p), text=inputs["encoder_hidden_states"].shape[1])
