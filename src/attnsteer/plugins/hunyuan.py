"""HunyuanVideo and HunyuanVideo 1.5 video transformers.

HunyuanVideo (``HunyuanVideoTransformer3DModel``; ``HunyuanVideoPipeline``,
``HunyuanVideoImageToVideoPipeline``, ``HunyuanSkyreelsImageToVideoPipeline``):

- Self-attention is ``transformer_blocks[i].attn`` (dual stream) and
  ``single_transformer_blocks[i].attn`` (single stream), NOT ``context_embedder.token_refiner...``
  (text only, before the blocks).
- Both see one joint sequence: the video tokens first, frame-major (``patch_size_t`` latent frames
  x ``patch_size`` x ``patch_size`` per token), then the ``encoder_hidden_states.shape[1]`` text
  tokens. Padded text is masked as keys by a boolean mask [B, 1, 1, S]; the padding stays in the
  text segment, where it receives no mass.
- The reference image is latent frame 0 in both I2V modes: ``latent_concat`` concatenates the
  image latent and a mask on frame 0 by channel (the pipeline drops that frame from the output);
  ``token_replace`` replaces frame 0 by the image latent and modulates its tokens with timestep 0.
- Guidance: the text-to-video pipeline runs ``cache_context("cond"/"uncond")``. The image-to-video
  pipelines set no context and keep ``do_true_cfg`` local: per step one forward, conditional (the
  ``_guidance_scale`` they store is the embedded, distilled guidance, not CFG), and with
  ``true_cfg_scale > 1`` and a negative prompt a second forward on the same latent input tensor,
  unconditional. So without a context, the first forward on a ``hidden_states`` tensor is "cond"
  and a second forward on that very tensor is "uncond".

HunyuanVideo 1.5 (``HunyuanVideo15Transformer3DModel``; ``HunyuanVideo15Pipeline``,
``HunyuanVideo15ImageToVideoPipeline``):

- Self-attention is ``transformer_blocks[i].attn`` (dual stream only; ``HunyuanVideo15AttnProcessor2_0``).
- The sequence is the video tokens first (frame-major, as above), then the conditioning tokens:
  SigLIP image tokens, byT5 glyph tokens and Qwen text tokens, which the transformer reorders per
  batch row as [valid image, valid byT5, valid text, padding]. Their boundaries depend on each
  row's masks and change between the guidance branches, so they form one "text" segment named
  ``image+byt5+text``: ``at.text`` selects all of them. The mask is a full boolean [B, 1, S, S]
  (padded tokens are masked as keys and as queries).
- The reference image is latent frame 0 (image latent and mask concatenated by channel).
- Guidance: the pipelines' guider runs one forward per branch under
  ``cache_context("pred_cond"/"pred_uncond")``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch

from ..layout import Segment, TokenLayout
from .base import Adapter, has_class_named, self_attention_modules
from .hookspecs import hookimpl

HUNYUAN_SELF_ATTENTION = r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"
HUNYUAN15_SELF_ATTENTION = r"transformer_blocks\.\d+\.attn"
FORWARD_ORDER = ("cond", "uncond")  # branches of the forwards an I2V pipeline makes on one latent input
HUNYUAN15_CONDITIONING = ("image_embeds", "encoder_hidden_states_2", "encoder_hidden_states")


def _video_tokens(model: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, tuple[int, int]]:
    """(token frames, (rows, cols) of a frame's token grid) of a [B, C, F, H, W] latent after the patch embedding."""
    _, _, frames, height, width = hidden_states.shape
    p, p_t = model.config.patch_size, model.config.patch_size_t
    return frames // p_t, (height // p, width // p)


def _video_then_text(model: torch.nn.Module, hidden_states: torch.Tensor, text: int, name: str = "") -> TokenLayout:
    num_frames, grid = _video_tokens(model, hidden_states)
    per_frame = grid[0] * grid[1]
    video = num_frames * per_frame
    return TokenLayout(num_frames=num_frames, tokens_per_frame=per_frame, grid=grid,
                       segments=[Segment("text", video, video + text, name=name)])


class HunyuanVideoAdapter(Adapter):
    family = "hunyuanvideo"

    def __init__(self) -> None:
        self._last_input: weakref.ref[torch.Tensor] | None = None
        self._repeats = 0

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return self_attention_modules(model, HUNYUAN_SELF_ATTENTION)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        return _video_then_text(model, inputs["hidden_states"], inputs["encoder_hidden_states"].shape[1])

    def branches(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], context: str | None, batch_size: int, pipeline: Any
    ) -> tuple[str, ...] | None:
        if context is not None:
            return super().branches(model, inputs, context, batch_size, pipeline)
        hidden_states = inputs["hidden_states"]
        if self._last_input is not None and self._last_input() is hidden_states:
            self._repeats += 1
        else:
            self._last_input, self._repeats = weakref.ref(hidden_states), 0
        if self._repeats >= len(FORWARD_ORDER):
            return None  # more forwards on one input than the pipelines make: do not guess
        return (FORWARD_ORDER[self._repeats],) * batch_size


class HunyuanVideo15Adapter(Adapter):
    family = "hunyuanvideo15"

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return self_attention_modules(model, HUNYUAN15_SELF_ATTENTION)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        conditioning = sum(inputs[k].shape[1] for k in HUNYUAN15_CONDITIONING if inputs.get(k) is not None)
        return _video_then_text(model, inputs["hidden_states"], conditioning, name="image+byt5+text")


@hookimpl
def attnsteer_adapter(model: torch.nn.Module) -> Adapter | None:
    if has_class_named(model, ("HunyuanVideoTransformer3DModel",)):
        return HunyuanVideoAdapter()
    if has_class_named(model, ("HunyuanVideo15Transformer3DModel",)):
        return HunyuanVideo15Adapter()
    return None
