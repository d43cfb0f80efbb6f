"""Text2Video-Zero (``TextToVideoZeroPipeline``, ``TextToVideoZeroSDXLPipeline``, deprecated): refused.

Its denoiser is the image UNet of Stable Diffusion (``UNet2DConditionModel``) with
``CrossFrameAttnProcessor`` on the self-attention: each frame is a batch row, and the keys and values
of every frame's spatial self-attention are replaced by the first frame's. No attention call holds the
queries of two frames, so there is no frame-to-frame logit to steer, and a frame's "attention to the
reference" is all of its attention. The same model class is every Stable Diffusion image pipeline's
UNet, which has no frames at all. ``at.GenericAdapter`` with a hand-written layout still serves a
module that calls ``F.scaled_dot_product_attention`` on a frame sequence.
"""

from __future__ import annotations

from ..contract.adapter import Adapter


class Text2VideoZeroAdapter(Adapter):
    family = "text2video-zero"
    model_classes = ("UNet2DConditionModel",)
    self_attention = r".*attn1"
    text = "cross"
    refusal = ("it is an image UNet: in Text2Video-Zero each frame is a batch row and its self-attention takes the "
               "first frame's keys and values (CrossFrameAttnProcessor), so no attention call holds two frames' "
               "queries and there is no frame-to-frame logit to steer; in Stable Diffusion image pipelines it has no "
               "frames at all")
    tested = "a session on a tiny UNet2DConditionModel with cross-frame attention raises naming the reason"
