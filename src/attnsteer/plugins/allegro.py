"""Allegro video transformer (``AllegroTransformer3DModel``; ``AllegroPipeline``).

Layout facts:

- Self-attention is ``transformer_blocks[i].attn1`` (legacy ``Attention`` with ``AllegroAttnProcessor2_0``,
  which calls F.sdpa directly, with 3D RoPE on q and k). It sees video tokens only, frame-major: the
  patch embedding patches each latent frame by ``patch_size`` x ``patch_size`` (Allegro's
  ``patch_size_t`` is 1; the embedding never merges frames), so token frame k is latent frame k.
  The pipeline passes no video attention mask.
- Text cross-attention is ``transformer_blocks[i].attn2``; its keys are the ``max_sequence_length``
  text tokens, padding masked by an additive -10000 bias. The pipeline hands the text as
  ``encoder_hidden_states`` [B, 1, L, C] (the caption projection flattens it), so the text length is
  its second-to-last dimension.
- No conditioning image (text-to-video): frame 0 is the first generated frame, the anchor DyMoS uses.
- Guidance: one forward per step, batch [uncond, cond], no cache context; the pipeline keeps
  ``do_classifier_free_guidance`` local and stores ``_guidance_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout


class AllegroAdapter(Adapter):
    family = "allegro"
    model_classes = ("AllegroTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    cross_attention = r"transformer_blocks\.\d+\.attn2"
    text = "cross"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-allegro",)
    table_entries = {"reference frames": "none (text-to-video): frame 0 is the first frame"}
    tested = "a text cross-attention rule against dense, with padded text masked by Allegro's additive bias"

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, frame-major, ``patch_size`` x ``patch_size`` latent pixels per token, one token frame per latent frame."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p = model.config.patch_size
        return self.token_layout(frames, (height // p, width // p))

    def text_length(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> int | None:
        """The text tokens of ``encoder_hidden_states`` [B, 1, L, C] (or [B, L, C])."""
        text = inputs.get("encoder_hidden_states")
        return None if text is None else int(text.shape[-2])
