"""HunyuanVideo Framepack (``HunyuanVideoFramepackTransformer3DModel``; ``HunyuanVideoFramepackPipeline``).

Framepack generates a long video section by section; each forward denoises one section of
``latent_window_size`` latent frames with the video so far packed into the sequence as history.

Layout facts:

- Self-attention is ``transformer_blocks[i].attn`` (dual stream) and ``single_transformer_blocks[i].attn``
  (single stream), as in HunyuanVideo; ``context_embedder.token_refiner...`` is text-only.
- The joint sequence is, in order: the 4x-compressed history (``latents_history_4x``, patch (4, 8, 8)
  after padding to multiples of it), the 2x-compressed history (``latents_history_2x``, patch (2, 4, 4)),
  the clean latents (``latents_clean``: the start image latent, then the 1x history frames; patch
  (1, 2, 2), the section's own token grid), the section's noisy latent frames (patch (1, 2, 2)), then the
  SigLIP image tokens (``image_embeds``) and the text tokens. With batch size 1 the model drops the
  padded text tokens (its sequence holds only the valid ones); with a larger batch they stay, masked.
- attnsteer's frames are the 1x-resolution frames in sequence order: frame 0 the start image, frames
  1..k the 1x history (k = ``latents_clean`` frames - 1), then the section's frames. The history 4x and
  2x tokens are "condition" segments ``history 4x`` and ``history 2x`` (no frame: each token covers
  several frames), selected by ``~at.video & ~at.text``;
  the image and text tokens are one "text" segment ``image+text``.
- Reference frame: latent frame 0, the start image (clean; RoPE frame index 0). Frames 1..k are clean
  history, not generated in this section, but ``at.frames.generated`` includes them; ``at.frames[k + 1:]``
  selects the section being denoised.
- The temporal order differs from the sequence order (inverted anti-drifting sampling generates the
  video backwards: the history sits after the section in time); frame indices are sequence order.
- Guidance: no cache context; per step a conditional forward and, with ``true_cfg_scale > 1`` and a
  negative prompt, a second, unconditional forward on the very same latent tensor ("forward-order").
  ``guidance_scale`` is embedded (distilled) guidance. Steps restart with every section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..contract.output_parts import OutputPart
from ..errors import SteeringError
from ..language.layout import Segment, TokenLayout

HISTORY = (("history 4x", "latents_history_4x", (4, 8, 8)), ("history 2x", "latents_history_2x", (2, 4, 4)))


class FramepackAdapter(Adapter):
    family = "hunyuanvideo-framepack"
    model_classes = ("HunyuanVideoFramepackTransformer3DModel",)
    self_attention = r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"
    text = "joint-after"
    branches = "forward-order"
    tiny_models = ("tiny-framepack",)
    tested = ("history 4x/2x segments and the 1x history frame: a rule from the section's frames to the history "
              "against dense; padded text dropped per forward (batch 1)")

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """History 4x and 2x tokens (condition segments), then start image, 1x history and section frames (1x, frame-major), then image+text tokens."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p, p_t = model.config.patch_size, model.config.patch_size_t
        grid = (height // p, width // p)
        segments, position = [], 0
        for name, key, kernel in HISTORY:
            latents = inputs.get(key)
            if latents is None or inputs.get(f"indices_{key}") is None:
                continue
            t, h, w = latents.shape[2:]
            tokens = math.ceil(t / kernel[0]) * math.ceil(h / kernel[1]) * math.ceil(w / kernel[2])
            segments.append(Segment("condition", position, position + tokens, name=name))
            position += tokens
        clean = inputs.get("latents_clean")
        clean_frames = clean.shape[2] if clean is not None and inputs.get("indices_latents_clean") is not None else 0
        num_frames = clean_frames + frames // p_t
        video_end = position + num_frames * grid[0] * grid[1]
        text = conditioning_tokens(inputs)
        segments.append(Segment("text", video_end, video_end + text, name="image+text"))
        return TokenLayout(num_frames=num_frames, tokens_per_frame=grid[0] * grid[1], video_start=position,
                           segments=segments, grid=grid, reference_frames=(0,))

    def output_parts(self, output: Any, layout: TokenLayout, module: str) -> tuple[OutputPart, ...]:
        """The blocks return (latent tokens: history, clean and section frames; image+text tokens)."""
        positions = torch.arange(layout.seq_len)
        text = layout.segments[-1]
        latent, rest = positions[: text.start], positions[text.start:]
        if isinstance(output, tuple) and len(output) == 2 and all(isinstance(o, torch.Tensor) for o in output) \
                and output[0].shape[1] == latent.numel() and output[1].shape[1] == rest.numel():
            return OutputPart(0, latent), OutputPart(1, rest)
        return super().output_parts(output, layout, module)


def conditioning_tokens(inputs: Mapping[str, Any]) -> int:
    """Image and text tokens in the sequence: all of them, or (batch size 1) the valid ones only, as the model keeps."""
    image = inputs["image_embeds"].shape[1]
    text, mask = inputs["encoder_hidden_states"], inputs.get("encoder_attention_mask")
    if text.shape[0] != 1 or mask is None:
        return image + text.shape[1]
    valid = int(mask.sum())
    if not bool(mask[0, :valid].all()):
        raise SteeringError("HunyuanVideo Framepack: the text mask is not a run of valid tokens then padding; the "
                            "model's truncation to its sum would not keep the valid ones")
    return image + valid
