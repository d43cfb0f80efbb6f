"""Cosmos Predict video transformers (``CosmosTransformer3DModel``; ``Cosmos2VideoToWorldPipeline``,
``Cosmos2_5_PredictBasePipeline``, and Cosmos 1's ``CosmosTextToWorldPipeline`` / ``CosmosVideoToWorldPipeline``).

Layout facts:

- Self-attention is ``transformer_blocks[i].attn1`` (``CosmosAttnProcessor2_0`` through
  ``dispatch_attention_fn``: F.sdpa on the native backend). It sees video tokens only, frame-major,
  after a ``patch_size`` (p_t, p_h, p_w) patch embedding (Cosmos uses p_t = 1: token frame k is latent
  frame k). The condition mask and the padding mask are channels of the input, not tokens.
- Text cross-attention is ``transformer_blocks[i].attn2``; its keys are the text tokens
  (``encoder_hidden_states``, or its first element where Cosmos 2.5 passes a ``(text, image)`` tuple:
  the image-context call, whose keys are image tokens, passes through).
- Reference frames: the conditioning frames, read per forward from ``condition_mask`` [B, 1, T, H, W]
  (1 on the latent frames encoded from the input image or video: frame 0 for an image, the first
  ``(n - 1) // 4 + 1`` for an ``n``-frame video). They also get their own, low timestep; a forward's
  timestep is the maximum, the step's. Without conditioning frames (text-to-world) frame 0 is the
  anchor DyMoS uses.
- Guidance: no cache context; per step the conditional forward, then, with guidance on, the
  unconditional one at the same timestep (Cosmos 2 builds a separate latent input for each, Cosmos 2.5
  reuses one): the "step-order" convention.
- The Cosmos pipelines refuse to run without a safety checker; the tiny test pipeline passes a
  pass-through one, as diffusers' own fast tests do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout


class CosmosAdapter(Adapter):
    family = "cosmos"
    model_classes = ("CosmosTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    cross_attention = r"transformer_blocks\.\d+\.attn2"
    text = "cross"
    branches = "step-order"
    tiny_models = ("tiny-cosmos2",)
    table_entries = {"reference frames": "the conditioning latent frames of `condition_mask` (frame 0 for an image); "
                                         "latent frame 0 without any"}
    tested = ("a 5-frame video conditions latent frames 0 and 1 (the reference frames); conditional then "
              "unconditional forward per step, all conditional with guidance off; steps from sigma / (sigma + 1); "
              "Cosmos Predict 2.5 on a still video: DyMoS against dense, two conditioning frames")

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, frame-major, patch (1, 2, 2); the conditioning frames of ``condition_mask`` are the reference frames."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        layout = self.token_layout(frames // p_t, (height // p_h, width // p_w))
        conditioned = conditioning_frames(inputs.get("condition_mask"), p_t)
        return attrs.evolve(layout, reference_frames=conditioned) if conditioned else layout

    def text_length(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> int | None:
        """The text tokens of ``encoder_hidden_states`` (the first element of a ``(text, image)`` tuple)."""
        text = inputs.get("encoder_hidden_states")
        if isinstance(text, tuple):
            text = text[0]
        return None if text is None else int(text.shape[1])


def conditioning_frames(condition_mask: torch.Tensor | None, patch_t: int = 1) -> tuple[int, ...]:
    """The token frames whose latent frames all condition, in every row of ``condition_mask`` [B, 1, T, H, W]."""
    if condition_mask is None:
        return ()
    per_frame = condition_mask.detach().amin(dim=(0, 1, 3, 4)) > 0.5  # [T]
    per_token_frame = per_frame[: per_frame.numel() // patch_t * patch_t].view(-1, patch_t).all(dim=1)
    return tuple(int(f) for f in per_token_frame.nonzero().flatten())
