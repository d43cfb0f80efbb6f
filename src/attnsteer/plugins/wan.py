"""Wan 2.1 / 2.2 video transformers (SkyReels-V2's own transformer: :mod:`.skyreels_v2`).

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

Lucy Edit (``LucyEditPipeline``) runs the same experts on the noise latents concatenated by channel with the
source video's latents (in_channels 32): the layout is unchanged; frame 0 is the first frame of the edited
video, not an image, so ``at.frames.reference`` is that frame (the anchor DyMoS uses).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout


class WanAdapter(Adapter):
    family = "wan"
    model_classes = ("WanTransformer3DModel",)
    self_attention = r"blocks\.\d+\.attn1"
    cross_attention = r"blocks\.\d+\.attn2"
    text = "cross"
    branches = "separate-forwards"
    tiny_models = ("tiny-wan", "tiny-wan22", "tiny-wan-ti2v", "tiny-lucy-edit")
    tested = ("Wan 2.2 A14B: both experts in one session with one step count, a layer filter picking one expert; "
              "TI2V-5B: per-token timesteps map to scheduler steps; nested sessions add their biases; "
              "a hand-written attention dispatch raises")

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, frame-major, ``patch_size`` (1, 2, 2) latent pixels per token."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        return self.token_layout(frames // p_t, (height // p_h, width // p_w))

    def context_states(self, model: torch.nn.Module, embeds: torch.Tensor) -> torch.Tensor:
        """The text encoder's output through the model's own ``condition_embedder.text_embedder`` (what ``attn2``'s
        text keys and values are projected from)."""
        parameter = next(model.condition_embedder.text_embedder.parameters())
        return model.condition_embedder.text_embedder(embeds.to(parameter.device, parameter.dtype))
