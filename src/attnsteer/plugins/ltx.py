"""LTX-Video (``LTXVideoTransformer3DModel``), image-to-video.

Layout facts: self-attention is ``transformer_blocks[i].attn1``; it sees video tokens only,
packed frame-major before the transformer (patch ``patch_size`` x ``patch_size`` spatially and
``patch_size_t`` in time); the I2V pipeline passes the latent grid as ``num_frames``, ``height``,
``width``. The image latent is latent frame 0, marked by a per-token timestep of 0 (the timestep
of a forward is the maximum over tokens). One forward per step, batch [uncond, cond] under
``cache_context("cond_uncond")``.

``LTXConditionPipeline`` passes ``video_coords`` instead of the grid and prepends condition tokens
for frames > 0; mapping those is not implemented, so its forwards raise instead of shifting frame
indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import SteeringError
from ..layout import TokenLayout
from .base import Adapter, has_class_named, self_attention_modules
from .hookspecs import hookimpl

SELF_ATTENTION = r"transformer_blocks\.\d+\.attn1"


class LTXAdapter(Adapter):
    family = "ltx"

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return self_attention_modules(model, SELF_ATTENTION)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        frames, height, width = (inputs.get(k) for k in ("num_frames", "height", "width"))
        if frames is None or height is None or width is None:
            raise SteeringError(
                f"{type(model).__name__} was called without num_frames/height/width (LTXConditionPipeline passes "
                "video_coords and prepends condition tokens); attnsteer cannot map its tokens to frames yet"
            )
        p, p_t = model.config.patch_size, model.config.patch_size_t
        return TokenLayout(num_frames=int(frames) // p_t, tokens_per_frame=(int(height) // p) * (int(width) // p))


@hookimpl
def attnsteer_adapter(model: torch.nn.Module) -> Adapter | None:
    return LTXAdapter() if has_class_named(model, ("LTXVideoTransformer3DModel",)) else None
