"""Kandinsky 5 video transformer (``Kandinsky5Transformer3DModel``; ``Kandinsky5T2VPipeline``,
``Kandinsky5I2VPipeline``).

Layout facts:

- Self-attention over the video is ``visual_transformer_blocks[i].self_attention`` (``Kandinsky5AttnProcessor``
  through ``dispatch_attention_fn``: F.sdpa on the native backend), NOT
  ``text_transformer_blocks[i].self_attention`` (text only, before the video blocks). It sees video
  tokens only. The latent is channels-last, ``hidden_states`` [B, T, H, W, C]; the patch embedding
  takes ``patch_size`` (1, 2, 2) and, with regular attention, flattens frame-major.
- Text cross-attention is ``visual_transformer_blocks[i].cross_attention``; its keys are the Qwen text
  tokens (``encoder_hidden_states`` [B, L, C]); the pooled CLIP embedding only modulates.
- Sparse "nabla" attention (``attention_type="nabla"``: the pipelines then pass ``sparse_params``)
  reorders the video tokens in 8x8 blocks ("fractal" order) and masks attention with a flex
  ``BlockMask``, which F.sdpa cannot take: such a forward is refused (its attention cannot be
  steered exactly); the regular-attention checkpoints work.
- Reference frame: latent frame 0 in image-to-video (the image latent replaces it, the visual
  condition mask marks it, and the scheduler never updates it). Text-to-video has none; frame 0 is
  the first generated frame, the anchor DyMoS uses.
- Guidance: no cache context; per step the conditional forward, then, with ``guidance_scale > 1``, the
  unconditional one at the same timestep: the "step-order" convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..errors import SteeringError
from ..language.layout import TokenLayout


class Kandinsky5Adapter(Adapter):
    family = "kandinsky5"
    model_classes = ("Kandinsky5Transformer3DModel",)
    self_attention = r"visual_transformer_blocks\.\d+\.self_attention"
    cross_attention = r"visual_transformer_blocks\.\d+\.cross_attention"
    text = "cross"
    branches = "step-order"
    tiny_models = ("tiny-kandinsky5-i2v", "tiny-kandinsky5-t2v")
    tested = "sparse (nabla) attention raises naming the reason"
    table_entries = {"reference frames": "latent frame 0 (the image in image-to-video; the first frame in "
                                         "text-to-video)"}
    block_pattern = r"visual_transformer_blocks\.\d+"

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, frame-major from a channels-last latent, patch (1, 2, 2); sparse (nabla) attention is refused."""
        if inputs.get("sparse_params") is not None:
            raise SteeringError(
                f"{type(model).__name__} runs sparse 'nabla' attention (sparse_params given; attention_type="
                f"{model.config.attention_type!r}): its video tokens are reordered in 8x8 blocks and attention is masked "
                "by a flex BlockMask that F.scaled_dot_product_attention cannot take, so it cannot be steered exactly; "
                "use a checkpoint with attention_type='regular'"
            )
        _, frames, height, width, _ = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        return self.token_layout(frames // p_t, (height // p_h, width // p_w))
