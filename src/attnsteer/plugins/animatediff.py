"""AnimateDiff (``UNetMotionModel``: a Stable Diffusion UNet with ``MotionAdapter`` motion modules).

Pipelines: ``AnimateDiffPipeline``, ``AnimateDiffSDXLPipeline``, ``AnimateDiffVideoToVideoPipeline``,
``AnimateDiffControlNetPipeline``, ``AnimateDiffVideoToVideoControlNetPipeline``,
``AnimateDiffSparseControlNetPipeline`` (all denoise with ``unet``, a ``UNetMotionModel``).

Layout facts:

- The image UNet's attention (``attentions.j.transformer_blocks.k.attn1``: the h*w positions of
  one frame, batch B*F; ``attn2``: cross-attention to the prompt) runs per frame. The motion
  modules ``{down_blocks.i,mid_block,up_blocks.i}.motion_modules.j`` (``AnimateDiffTransformer3D``)
  fold space into the batch, (B*F, C, h, w) -> (B*h*w, F, C), video-major, and run
  ``transformer_blocks.k`` whose ``attn1`` and ``attn2`` are both self-attention over the F frames
  (``double_self_attention``: the motion modules get no encoder states; an ``attn2`` built as
  cross-attention is left out). Legacy ``Attention`` with ``AttnProcessor2_0`` (F.sdpa).
- Which calls rules act on: the motion modules' self-attention only, in execution order (down
  blocks, mid block, up blocks; ``attn1`` then ``attn2``). One token per frame:
  ``TokenLayout(num_frames=F, tokens_per_frame=1)``, F = ``sample.shape[2]`` (the SD VAE is per
  image: latent frames are video frames). A spatial call holds one frame, so no frame-to-frame
  rule can act there; the spatial self- and cross-attention are left alone.
- FreeNoise (``enable_free_noise``) runs the motion blocks on overlapping windows of
  ``context_length`` frames, whose calls do not have F tokens: a session then raises (layout
  mismatch) instead of guessing which frames a window holds.
- Reference frame: none holds an image (video-to-video encodes every frame alike);
  ``at.frames.reference`` is frame 0, the first frame.
- Guidance: one forward per step with the batch [uncond, cond], no cache context;
  ``do_classifier_free_guidance`` says whether the batch is doubled. ``AnimateDiffPAGPipeline``
  batches [uncond, cond, perturbed] (``do_perturbed_attention_guidance``): its rows' branches are
  not read (rules on one branch raise; ``branch="all"`` rules act on every row).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.branches import CONVENTIONS
from .temporal import TemporalUNetAdapter


class AnimateDiffAdapter(TemporalUNetAdapter):
    family = "animatediff"
    model_classes = ("UNetMotionModel",)
    self_attention = (r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+"
                      r"\.transformer_blocks\.\d+\.attn[12]")
    text = "cross"
    tiny_models = ("tiny-animatediff",)
    tested = ("motion-module attn1 and attn2 only, in execution order; a frame-to-frame rule against dense with "
              "the per-frame spatial calls unchanged")
    table_entries = {"reference frames": "none (text-to-video): frame 0 is the first frame"}
    block_pattern = r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+\.transformer_blocks\.\d+"

    def branches(self, model: torch.nn.Module, inputs: Mapping[str, Any], context: str | None, batch_size: int,
                 pipeline: Any) -> tuple[str, ...] | None:
        """batched-uncond-cond: one forward, batch [uncond, cond], every row conditional while guidance is off; with
        perturbed-attention guidance (AnimateDiffPAGPipeline, batch [uncond, cond, perturbed]) unknown."""
        try:
            perturbed = bool(getattr(pipeline, "do_perturbed_attention_guidance", False))
        except (AttributeError, TypeError):  # a property reading state set only inside __call__
            perturbed = False
        if perturbed:
            return None
        return CONVENTIONS["batched-uncond-cond"].__get__(self)(model, inputs, context, batch_size, pipeline)
