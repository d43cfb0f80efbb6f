"""Mochi 1 video transformer (``MochiTransformer3DModel``; ``MochiPipeline``).

Layout facts:

- Self-attention is ``transformer_blocks[i].attn1`` (``MochiAttention`` with ``MochiAttnProcessor2_0``,
  which calls F.sdpa directly and ignores attention backends). It is joint: video tokens first,
  frame-major (no temporal patching: one token frame per latent frame, ``patch_size`` x ``patch_size``
  latent pixels per token), then the text tokens.
- The processor makes one SDPA call *per batch row*, each over the video tokens and that row's
  *valid* text tokens only (``encoder_attention_mask[row]``; padding is dropped, not masked), so the
  calls of one module have batch 1 and a sequence length that depends on the row. Row ``r`` is the
  module's ``r``-th call; :meth:`MochiAdapter.call_view` gives each call its own layout and branch.
  The pipeline zeroes the mask of an empty prompt when ``force_zeros_for_empty_prompt``: that row's
  calls then hold video tokens only (they can be steered, but not recorded alongside rows with text).
- The module returns ``(video, text)`` with the text padded back to its full length (zeros).
- No conditioning image (text-to-video): frame 0 is the first generated frame, the anchor DyMoS uses.
- Guidance: one forward per step, batch [uncond, cond], ``cache_context("cond_uncond")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..contract.output_parts import OutputPart
from ..errors import SteeringError
from ..language.layout import TokenLayout


class MochiAdapter(Adapter):
    family = "mochi"
    model_classes = ("MochiTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    text = "joint-after"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-mochi",)
    table_entries = {"reference frames": "none (text-to-video): frame 0 is the first frame"}
    tested = ("one SDPA call per batch row over its valid text tokens: padded prompts of different lengths per "
              "branch steered against dense and recorded; an all-padding (zeroed) prompt steered, its recording refused")
    _valid_text: tuple[int, ...] = ()  # valid text tokens per batch row of the current forward (set by layout)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """Video tokens first (frame-major, patch 2), then the text tokens; each row's call holds its valid text only."""
        _, _, frames, height, width = inputs["hidden_states"].shape
        p = model.config.patch_size
        mask = inputs["encoder_attention_mask"]
        self._valid_text = tuple(int(n) for n in mask.bool().sum(dim=1))
        return self.token_layout(frames, (height // p, width // p), text=inputs["encoder_hidden_states"].shape[1])

    def call_view(self, layout: TokenLayout, branches: tuple[str, ...] | None, batch_size: int,
                  call: int) -> tuple[TokenLayout, tuple[str, ...] | None]:
        """Call ``r`` of a module is batch row ``r``: the video tokens, then that row's valid text tokens."""
        rows = len(self._valid_text)
        if batch_size != 1 or call >= rows:
            raise SteeringError(
                f"{type(self).__name__}: expected {rows} self-attention calls of batch 1 per module (one per batch "
                f"row), got call {call} with {batch_size} rows; MochiAttnProcessor2_0 was replaced?"
            )
        row = self.token_layout(layout.num_frames, layout.grid, text=self._valid_text[call])
        return row, None if branches is None else (branches[call],)

    def output_parts(self, output: Any, layout: TokenLayout, module: str) -> tuple[OutputPart, ...]:
        """The (video, padded text) outputs; refused where the text was padded (its rows differ from the calls')."""
        if any(n != layout.seq_len - layout.video_end for n in self._valid_text):
            raise SteeringError(
                f"self-attention module {module!r}: an output transform on Mochi needs every text token valid (its "
                f"calls drop padded text tokens; valid per row: {list(self._valid_text)})"
            )
        return super().output_parts(output, layout, module)
