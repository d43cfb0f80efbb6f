"""ChronoEdit (``ChronoEditTransformer3DModel``; ``ChronoEditPipeline``): image editing as a short Wan video.

Layout facts:

- A Wan 2.1 I2V copy: self-attention ``blocks[i].attn1`` over video tokens only, frame-major after a
  (1, 2, 2) patch embedding; ``blocks[i].attn2`` is cross-attention to the CLIP image tokens and the
  text (the text is the last 512 keys).
- The video is the input image (latent frame 0: channel-concat condition with mask 1, as Wan I2V) and
  the edited image (the last latent frame); without temporal reasoning the pipeline makes 5 frames =
  2 latent frames. With ``enable_temporal_reasoning`` the first ``num_temporal_reasoning_steps``
  steps run on all ``num_frames`` latent frames (the reasoning trajectory) and later steps on frames
  [0, last] only: the layout is read per forward, so frame indices refer to the forward's own frames
  (``at.frames[-1]`` is always the edited image); one ``at.inspect`` recording holds one layout, so
  recording across the switch raises (record the reasoning steps and the later ones separately). RoPE gives those two frames the temporal positions of
  frames 0 and ``rope_temporal_skip_len - 1``; the token order stays frame-major.
- Reference frame: latent frame 0 (the input image).
- Guidance: no cache context; per step a conditional forward, then (CFG on) an unconditional one on
  the very same latent input tensor: the "forward-order" convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..language.layout import TokenLayout


class ChronoEditAdapter(Adapter):
    family = "chronoedit"
    model_classes = ("ChronoEditTransformer3DModel",)
    self_attention = r"blocks\.\d+\.attn1"
    cross_attention = r"blocks\.\d+\.attn2"
    text = "cross"
    branches = "forward-order"
    tiny_models = ("tiny-chronoedit",)
    tested = ("temporal reasoning: the frame count drops from num_frames to 2 mid-run, DyMoS follows each forward's "
              "layout against dense; a recording across the switch raises")

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens only, frame-major, patch (1, 2, 2): input image (frame 0), [reasoning frames], edited image."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p_t, p_h, p_w = model.config.patch_size
        return self.token_layout(frames // p_t, (height // p_h, width // p_w))
