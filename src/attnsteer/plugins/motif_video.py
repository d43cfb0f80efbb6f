"""Motif-Video (``MotifVideoTransformer3DModel``): ``MotifVideoPipeline``, ``MotifVideoImage2VideoPipeline``.

Layout facts:

- Self-attention is joint video+text attention, HunyuanVideo-style: dual-stream
  ``transformer_blocks.i.attn`` then single-stream ``single_transformer_blocks.i.attn``
  (``MotifVideoAttention`` through ``dispatch_attention_fn``), returning (video, text).
- Sequence: video tokens first, frame-major after a ``patch_size_t`` x ``patch_size`` x ``patch_size``
  patch embedding, then the conditioning tokens: the projected SigLIP image embedding
  (``image_embeds``, I2V with a text encoder that has a vision tower) followed by the text tokens,
  one "text" segment ``image+text``. Padded text tokens are masked as keys ([B, 1, 1, S] mask).
- Decoder layers (``num_decoder_layers`` > 0): the last single-stream blocks run on a second video
  stream (the patch embedding again) as queries with the encoder's video output as the "text"
  stream: 2x the video tokens and no text. They are not self-attention over this layout and are
  left alone (not steered, not recorded); ``attention_modules`` lists the encoder blocks only.
- Optional text cross-attention ``cross_attn`` (``enable_text_cross_attention_*``, off by default)
  is not hooked: rules with ``attention="cross"`` raise; ``at.text`` rules act on the joint attention.
- Reference frame: latent frame 0, which holds the first-frame latent in I2V (condition latent and
  mask concatenated by channel); in T2V it is the first frame.
- Guidance: the pipelines' guider runs one forward per branch under
  ``cache_context("pred_cond"/"pred_uncond")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter, self_attention_modules
from ..language.layout import TokenLayout


class MotifVideoAdapter(Adapter):
    family = "motif-video"
    model_classes = ("MotifVideoTransformer3DModel",)
    self_attention = r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"
    text = "joint-after"
    branches = "separate-forwards"
    tiny_models = ("tiny-motif-video",)
    tested = ("the decoder block is left alone (not hooked, its calls unchanged against dense); padded text tokens "
              "masked as keys")

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The dual- and single-stream blocks' joint attention, without the ``num_decoder_layers`` decoder blocks."""
        found = self_attention_modules(model, self.self_attention)
        decoders = int(getattr(model.config, "num_decoder_layers", 0) or 0)
        return found[: len(found) - decoders]

    def blocks(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The dual- and single-stream encoder blocks (not the decoder blocks), in order."""
        found = self_attention_modules(model, r"(transformer_blocks|single_transformer_blocks)\.\d+")
        decoders = int(getattr(model.config, "num_decoder_layers", 0) or 0)
        return found[: len(found) - decoders]

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens first (frame-major, ``patch_size_t`` x ``patch_size``^2 patches), then image+text tokens."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p, p_t = model.config.patch_size, model.config.patch_size_t
        image = inputs.get("image_embeds")
        conditioning = inputs["encoder_hidden_states"].shape[1] + (image.shape[1] if image is not None else 0)
        return self.token_layout(frames // p_t, (height // p, width // p), text=conditioning,
                                 text_name="image+text" if image is not None else "text")
