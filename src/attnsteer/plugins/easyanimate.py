"""EasyAnimate video transformer (``EasyAnimateTransformer3DModel``; ``EasyAnimatePipeline``,
``EasyAnimateInpaintPipeline``, ``EasyAnimateControlPipeline``, which share the transformer).

Layout facts:

- Self-attention is ``transformer_blocks[i].attn1`` (legacy ``Attention`` with ``EasyAnimateAttnProcessor2_0``,
  which calls F.sdpa directly, no mask). It is joint: the text tokens first, then the video tokens,
  frame-major. The patch embedding patches each latent frame by ``patch_size`` x ``patch_size``
  (never merging frames), so token frame k is latent frame k.
- Text: ``encoder_hidden_states`` (Qwen2-VL or Bert), then ``encoder_hidden_states_t5`` when given,
  projected and concatenated; the pipelines do not pass the text mask to the transformer, so every
  text position (padding included) is a key.
- The module returns ``(video, text)`` outputs.
- The inpaint and control pipelines concatenate ``inpaint_latents`` (mask and masked video) or
  ``control_latents`` to the latent by channel: the token layout is unchanged. With an image (the
  inpaint pipeline's image-to-video use, the control pipeline's ``ref_image``, whose latent fills frame 0 of
  the reference channels) the reference is latent frame 0; text-to-video has none, frame 0 is then the first
  generated frame, the anchor DyMoS uses. In diffusers 0.42 ``EasyAnimateControlPipeline.__call__`` passes
  ``text_encoder_index`` to its ``encode_prompt``, which does not take it (TypeError before any forward), and
  calls a ``decode_latents`` it does not have (unless ``output_type="latent"``); the tiny pipeline
  ``tiny-easyanimate-control`` fills in both, nothing else.
- Guidance: one forward per step, batch [uncond, cond], no cache context
  (``do_classifier_free_guidance`` is a property).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout


class EasyAnimateAdapter(Adapter):
    family = "easyanimate"
    model_classes = ("EasyAnimateTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    text = "joint-before"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-easyanimate", "tiny-easyanimate-inpaint", "tiny-easyanimate-control")
    table_entries = {"reference frames": "latent frame 0 (the image in image-to-video; the first frame in "
                                         "text-to-video)"}

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Text first (then T5 text, if given), then video tokens frame-major, ``patch_size`` x ``patch_size`` per token."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p = model.config.patch_size
        text = sum(inputs[k].shape[1] for k in ("encoder_hidden_states", "encoder_hidden_states_t5")
                   if inputs.get(k) is not None)
        return self.token_layout(frames, (height // p, width // p), text=text)
