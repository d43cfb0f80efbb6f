"""CogVideoX and CogVideoX 1.5 video transformers (``CogVideoXTransformer3DModel``).

Layout facts:

- Self-attention is ``transformer_blocks[i].attn1`` (legacy ``Attention`` with
  ``CogVideoXAttnProcessor2_0``, which calls F.sdpa directly and ignores attention backends).
- It sees one joint sequence: the ``encoder_hidden_states.shape[1]`` text tokens first, then the
  video tokens, frame-major, ``patch_size`` x ``patch_size`` latent pixels per token.
- ``hidden_states`` is [B, F, C, H, W]. CogVideoX 1.5 also patches time: one token frame holds
  ``patch_size_t`` consecutive latent frames, so the attention (and the frame map) has
  ``F // patch_size_t`` frames, which are the unit of ``at.frames[...]`` for these models. The
  pipelines pad the latent frames to a multiple of ``patch_size_t`` *before* the video: the image
  latent is concatenated by channel to latent frame 0, and the first ``additional_frames`` latent
  frames are dropped after denoising. Token frame k holds latent frames
  ``k * patch_size_t .. (k + 1) * patch_size_t - 1`` of the padded sequence the model sees, so
  token frame 0 holds the image-conditioned latent frame.
- Reference frame: frame 0 (the image latent is concatenated by channel to latent frame 0).
- Guidance: one forward per step, batch [uncond, cond], ``cache_context("cond_uncond")``; the I2V
  pipeline keeps ``do_classifier_free_guidance`` local and stores ``_guidance_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..errors import SteeringError
from ..language.layout import TokenLayout


class CogVideoXAdapter(Adapter):
    family = "cogvideox"
    model_classes = ("CogVideoXTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    text = "joint-before"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-cogvideox", "tiny-cogvideox15")
    tested = ("the uncond branch hits the first half of the batch; no guidance makes every row conditional; "
              "at.text rules; latent frames that are not a multiple of patch_size_t raise; a processor that "
              "bypasses SDPA raises")

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Text first, then video tokens frame-major, patch 2 (and ``patch_size_t`` latent frames per token frame in 1.5)."""
        _, frames, _, height, width = inputs["hidden_states"].shape
        patch, patch_t = model.config.patch_size, model.config.patch_size_t or 1
        if frames % patch_t:
            raise SteeringError(
                f"{type(model).__name__} got {frames} latent frames, not a multiple of patch_size_t={patch_t}: "
                "its tokens cannot be mapped to frames (the CogVideoX pipelines pad the latent frames first)"
            )
        return self.token_layout(frames // patch_t, (height // patch, width // patch),
                                 text=inputs["encoder_hidden_states"].shape[1])

