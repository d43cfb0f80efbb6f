"""Stable Video Diffusion (``UNetSpatioTemporalConditionModel``, ``StableVideoDiffusionPipeline``).

Layout facts:

- Self-attention across frames is the temporal attention
  ``{down_blocks.i,mid_block,up_blocks.i}.attentions.j.temporal_transformer_blocks.k.attn1``
  (legacy ``Attention`` with ``AttnProcessor2_0``, which calls F.sdpa). Layer order is execution
  order: down blocks, mid block, up blocks. The spatial self-attention
  (``transformer_blocks.k.attn1``: the h*w positions of one frame) and the temporal cross-attention
  ``attn2`` (to the CLIP image embedding) are left alone.
- ``TemporalBasicTransformerBlock`` folds space into the batch, (B*F, h*w, C) -> (B*h*w, F, C):
  each attention row is one spatial position of one video, and its sequence is the F frames of the
  UNet input (``sample`` [B, F, C, H, W]; SVD's VAE does not compress time, so latent frames are
  video frames), one token per frame: ``TokenLayout(num_frames=F, tokens_per_frame=1)``.
  Attention rows are video-major: row r belongs to video r // (h*w), and h*w differs per UNet level.
- Reference frame: SVD conditions every frame on the image (its CLIP embedding in the temporal and
  spatial cross-attention, its noise-augmented latent concatenated by channel to every frame), so
  no frame holds the image. ``at.frames.reference`` is frame 0, the first frame of the video, which
  the model renders as the image; "generated" frames are 1..F-1.
- Guidance: one forward per step with the batch [uncond, cond] (zero image embedding and zero image
  latent for uncond), no cache context; ``do_classifier_free_guidance`` says whether the batch is
  doubled (the guidance scale ramps per frame from ``min_guidance_scale`` to ``max_guidance_scale``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter, self_attention_modules
from ..language.layout import TokenLayout

EXECUTION_ORDER = ("down_blocks", "mid_block", "up_blocks")


class StableVideoDiffusionAdapter(Adapter):
    family = "svd"
    model_classes = ("UNetSpatioTemporalConditionModel",)
    self_attention = (
        r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.temporal_transformer_blocks\.\d+\.attn1"
    )
    text = None
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-svd",)
    tested = ("temporal layers only, in execution order; no guidance makes every row conditional; "
              "a processor that computes attention by hand raises")

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The temporal self-attention modules in execution order: down blocks, mid block, up blocks."""
        found = self_attention_modules(model, self.self_attention)
        return sorted(found, key=lambda item: EXECUTION_ORDER.index(item[0].split(".", 1)[0]))

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """The frames: calls are (videos x h x w, F), one token per frame."""
        return self.token_layout(inputs["sample"].shape[1], None, tokens_per_frame=1)

    def attention_branches(self, branches: tuple[str, ...] | None, batch_size: int) -> tuple[str, ...] | None:
        """Each video's branch repeated over its h*w spatial positions (attention rows are video-major)."""
        if branches is None or batch_size % len(branches):
            return super().attention_branches(branches, batch_size)
        positions = batch_size // len(branches)
        return tuple(branch for branch in branches for _ in range(positions))
