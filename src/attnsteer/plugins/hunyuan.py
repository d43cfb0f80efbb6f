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

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout

HUNYUAN15_CONDITIONING = ("image_embeds", "encoder_hidden_states_2", "encoder_hidden_states")


class HunyuanVideoAdapter(Adapter):
    family = "hunyuanvideo"
    model_classes = ("HunyuanVideoTransformer3DModel",)
    self_attention = r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"
    text = "joint-after"
    branches = "forward-order"
    tiny_models = ("tiny-hunyuan", "tiny-hunyuan-token-replace")
    tested = ("true CFG on and off (two forwards per step or one), the swapped forward would not match; "
              "the flex backend is steered like native")

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens first (frame-major, patch ``patch_size_t`` x 2 x 2), then all text tokens (padding masked as keys)."""
        return self.token_layout(*video_tokens(model, inputs["hidden_states"]),
                                 text=inputs["encoder_hidden_states"].shape[1])


class HunyuanVideo15Adapter(Adapter):
    family = "hunyuanvideo15"
    model_classes = ("HunyuanVideo15Transformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn"
    text = "joint-after"
    branches = "separate-forwards"
    tiny_models = ("tiny-hunyuan15",)
    tested = "padded conditioning tokens (hidden as keys and as queries); the flex backend is steered like native"

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens first, then SigLIP image, byT5 and text tokens as one "text" segment ``image+byt5+text``."""
        conditioning = sum(inputs[k].shape[1] for k in HUNYUAN15_CONDITIONING if inputs.get(k) is not None)
        return self.token_layout(*video_tokens(model, inputs["hidden_states"]), text=conditioning,
                                 text_name="image+byt5+text")


def video_tokens(model: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, tuple[int, int]]:
    """(token frames, (rows, cols) of a frame's token grid) of a [B, C, F, H, W] latent after the patch embedding."""
    _, _, frames, height, width = hidden_states.shape
    p, p_t = model.config.patch_size, model.config.patch_size_t
    return frames // p_t, (height // p, width // p)
