"""Wan 2.1 / 2.2 (and SkyReels-V2) video transformers.

Layout facts: self-attention is ``blocks[i].attn1``; it sees video tokens only, frame-major,
after a (1, 2, 2) patch embedding; the reference image is latent frame 0 (channel-concat
condition in I2V, replaced frame with timestep 0 in TI2V). Cross-attention (``attn2``) is steered
by rules with ``attention="cross"`` only (its calls with the forward's text tokens as keys; the
I2V image-key call is left alone). Wan pipelines run one forward per guidance branch under
``cache_context("cond"/"uncond")``.

Wan 2.2 A14B pipelines hold two experts, ``transformer`` (high noise) and ``transformer_2`` (low
noise, after ``boundary_ratio``); steering the pipeline hooks both, and both take their step index
from the pipeline's scheduler, so they share one step count. TI2V-5B (``expand_timesteps=True``)
passes per-token timesteps [B, S], 0 on latent frame 0's tokens; a forward's timestep is their
maximum, the step's timestep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..layout import TokenLayout
from .base import Adapter, has_class_named, self_attention_modules
from .hookspecs import hookimpl

SELF_ATTENTION = r"blocks\.\d+\.attn1"
CROSS_ATTENTION = r"blocks\.\d+\.attn2"
WAN_CLASSES = ("WanTransformer3DModel", "SkyReelsV2Transformer3DModel")


class WanAdapter(Adapter):
    family = "wan"

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return self_attention_modules(model, SELF_ATTENTION)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        _, _, frames, height, width = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        rows, cols = height // p_h, width // p_w
        return TokenLayout(num_frames=frames // p_t, tokens_per_frame=rows * cols, grid=(rows, cols))

    def cross_attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return self_attention_modules(model, CROSS_ATTENTION)

    def text_length(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> int | None:
        return int(inputs["encoder_hidden_states"].shape[1])


@hookimpl
def attnsteer_adapter(model: torch.nn.Module) -> Adapter | None:
    if has_class_named(model, WAN_CLASSES):
        return WanAdapter()
    return None
