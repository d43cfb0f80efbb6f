"""Wan VACE (``WanVACETransformer3DModel``; ``WanVACEPipeline``): Wan 2.1/2.2 with VACE context blocks.

Layout facts:

- The main blocks are Wan's: self-attention ``blocks[i].attn1`` over the video tokens only,
  frame-major after a (1, 2, 2) patch embedding; ``blocks[i].attn2`` is the text cross-attention.
- The VACE context blocks ``vace_blocks[j]`` (one per entry of ``config.vace_layers``) run first in
  every forward, on a second stream: the control latents (VAE latents of the kept and of the
  regenerated parts of the control video, and the 8x8-unshuffled mask, ``vace_in_channels``) through
  their own patch embedding, with the video's RoPE. ``vace_blocks[j].attn1`` is self-attention over
  that control context *only* (its queries and keys are control tokens, never video tokens); its
  sequence has the video's length and layout (control frame f sits where latent frame f sits), so the
  same frame selectors apply. Their outputs are added as hints after ``blocks[vace_layers[j]]``.
- attnsteer steers and records both: the self-attention layers are the VACE context blocks first, then
  the main blocks (their call order in a forward; layer indices follow it), named
  ``vace_blocks.{j}.attn1`` and ``blocks.{i}.attn1``. A rule reaches only one stream with a layer
  filter: ``layers=r"blocks\\.\\d+\\.attn1"`` (main video stream) or ``layers=r"vace_blocks\\..*"``
  (control context). ``vace_blocks[j].attn2`` is text cross-attention like ``attn2``.
- Reference frames: ``reference_images`` are VAE-encoded and prepended as latent frames 0..R-1 (the
  pipeline drops them from the output), with mask 0; a kept control frame (mask 0, e.g. the first
  frame of an image-to-video control video) is likewise given, not generated. The reference frames
  are the leading latent frames whose control mask is 0 everywhere (the mask is the last
  ``vace_in_channels - 2 * out_channels`` control channels); a call without such frames (text-to-video,
  video-to-video with every frame regenerated) has none.
- Guidance: one forward per branch under ``cache_context("cond"/"uncond")``; Wan 2.2 VACE's two
  experts (``transformer``, ``transformer_2``) are hooked both, as for Wan 2.2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter, self_attention_modules
from ..language.layout import TokenLayout


class WanVACEAdapter(Adapter):
    family = "wan-vace"
    model_classes = ("WanVACETransformer3DModel",)
    self_attention = r"(vace_blocks|blocks)\.\d+\.attn1"
    cross_attention = r"(vace_blocks|blocks)\.\d+\.attn2"
    text = "cross"
    branches = "separate-forwards"
    tiny_models = ("tiny-wan-vace",)
    tested = ("the VACE context blocks are control-stream self-attention: a rule filtered to them matches a dense "
              "run biasing only those calls; reference images are leading mask-0 frames")
    table_entries = {
        "self-attention modules": "`vace_blocks.{j}.attn1` (control context, run first), then `blocks.{i}.attn1` "
                                  "(video); cross-attention `(vace_blocks|blocks).{i}.attn2`",
        "reference frames": "the leading latent frames whose VACE mask is 0 (reference images, kept control frames)",
    }

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The VACE context blocks' self-attention first, then the main blocks': the order a forward calls them."""
        return (self_attention_modules(model, r"vace_blocks\.\d+\.attn1")
                + self_attention_modules(model, r"blocks\.\d+\.attn1"))

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video (and, in the VACE blocks, control) tokens, frame-major, patch (1, 2, 2); leading mask-0 frames are reference."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        layout = self.token_layout(frames // p_t, (height // p_h, width // p_w))
        return TokenLayout(num_frames=layout.num_frames, tokens_per_frame=layout.tokens_per_frame, grid=layout.grid,
                           reference_frames=kept_leading_frames(model, inputs.get("control_hidden_states"), p_t))


def kept_leading_frames(model: torch.nn.Module, control: torch.Tensor | None, patch_t: int) -> tuple[int, ...]:
    """The leading token frames whose VACE mask channels are 0 in every batch row (given, not generated)."""
    if control is None:
        return ()
    mask = control[:, 2 * model.config.out_channels:]
    kept = (mask == 0).flatten(3).all(dim=-1).all(dim=1).all(dim=0)  # [F]: the mask is 0 over the whole frame
    frames: list[int] = []
    for f in range(kept.numel() // patch_t):
        if not bool(kept[f * patch_t:(f + 1) * patch_t].all()):
            break
        frames.append(f)
    return tuple(frames)
