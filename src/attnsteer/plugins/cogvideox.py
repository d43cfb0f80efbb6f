"""CogVideoX and CogVideoX 1.5 video transformers.

Layout facts: self-attention is ``transformer_blocks[i].attn1`` (legacy ``Attention`` with
``CogVideoXAttnProcessor2_0``, which calls F.sdpa directly); it sees a joint sequence, the text
tokens first (``encoder_hidden_states.shape[1]``), then video tokens frame-major with a 2x2
spatial patch. CogVideoX 1.5 also patches time (``patch_size_t``): one token frame covers
``patch_size_t`` latent frames, and the pipeline pads the latent frames to a multiple of it at the
start, so token frame 0 holds the reference image. The I2V pipelines run one forward per step with
the batch [uncond, cond] under ``cache_context("cond_uncond")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..layout import Segment, TokenLayout
from .base import Adapter, has_class_named, self_attention_modules
from .hookspecs import hookimpl

SELF_ATTENTION = r"transformer_blocks\.\d+\.attn1"


class CogVideoXAdapter(Adapter):
    family = "cogvideox"

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return self_attention_modules(model, SELF_ATTENTION)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        _, frames, _, height, width = inputs["hidden_states"].shape
        text = inputs["encoder_hidden_states"].shape[1]
        patch, patch_t = model.config.patch_size, model.config.patch_size_t or 1
        return TokenLayout(
            num_frames=frames // patch_t,
            tokens_per_frame=(height // patch) * (width // patch),
            video_start=text,
            segments=[Segment("text", 0, text)],
        )


@hookimpl
def attnsteer_adapter(model: torch.nn.Module) -> Adapter | None:
    return CogVideoXAdapter() if has_class_named(model, ("CogVideoXTransformer3DModel",)) else None
