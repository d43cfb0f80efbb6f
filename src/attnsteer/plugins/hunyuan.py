"""HunyuanVideo (``HunyuanVideoTransformer3DModel``), text-to-video and image-to-video.

Layout facts: self-attention is ``transformer_blocks[i].attn`` (dual-stream) and
``single_transformer_blocks[i].attn`` (single-stream), NOT ``context_embedder.token_refiner...``
(text only). Both see a joint sequence: video tokens first, frame-major (patch ``patch_size``,
``patch_size_t`` frames per token frame), then the text tokens, with a boolean key-padding mask
[B, 1, 1, S] over padded text. The reference image is latent frame 0 in both I2V modes
(``latent_concat`` adds it by channel, ``token_replace`` replaces frame 0 and gives it timestep 0).

Guidance: the pipelines set no ``cache_context`` and keep ``do_true_cfg`` local. With distilled
guidance there is one forward per step (conditional); with ``true_cfg_scale > 1`` there are two
per step, conditional first. So the branch of a forward is told by its order among the forwards
that share a timestep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..layout import Segment, TokenLayout
from .base import Adapter, has_class_named, self_attention_modules
from .hookspecs import hookimpl

SELF_ATTENTION = r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"
BRANCH_ORDER = ("cond", "uncond")


class HunyuanVideoAdapter(Adapter):
    family = "hunyuanvideo"

    def __init__(self) -> None:
        self._timestep: float | None = None
        self._forwards_at_timestep = 0

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return self_attention_modules(model, SELF_ATTENTION)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        _, _, frames, height, width = inputs["hidden_states"].shape
        p, p_t = model.config.patch_size, model.config.patch_size_t
        num_frames, per_frame = frames // p_t, (height // p) * (width // p)
        video = num_frames * per_frame
        text = inputs["encoder_hidden_states"].shape[1]
        return TokenLayout(num_frames=num_frames, tokens_per_frame=per_frame,
                           segments=[Segment("text", video, video + text)])

    def branches(self, model, inputs, context, batch_size, pipeline) -> tuple[str, ...] | None:
        if context is not None:
            return super().branches(model, inputs, context, batch_size, pipeline)
        timestep = self.timestep(model, inputs)
        if timestep is None:
            return None
        if timestep != self._timestep:
            self._timestep, self._forwards_at_timestep = timestep, 0
        self._forwards_at_timestep += 1
        if self._forwards_at_timestep > len(BRANCH_ORDER):
            return None  # more forwards per step than the pipelines make: do not guess
        return (BRANCH_ORDER[self._forwards_at_timestep - 1],) * batch_size


@hookimpl
def attnsteer_adapter(model: torch.nn.Module) -> Adapter | None:
    return HunyuanVideoAdapter() if has_class_named(model, ("HunyuanVideoTransformer3DModel",)) else None
