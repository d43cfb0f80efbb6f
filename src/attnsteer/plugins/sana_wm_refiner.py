"""SANA-WM's LTX-2 refiner (``SanaWMLTX2RefinerTransformer3DModel``, the ``SanaWMLTX2Refiner`` pipeline, stage 2 of
``SanaWMPipeline``): chunk-causal refinement over a sliding-window KV cache.

Layout facts:

- The pipeline refines ``block_size`` latent frames at a time. Each forward gets the active block's tokens only
  (packed frame-major, one token per latent pixel, patch 1) and runs the video stream only: the blocks carry
  LTX-2's audio and audio-video modules but never call them (nothing to hook there).
- ``transformer_blocks[i].attn1``: self-attention whose queries are the block's tokens and whose keys are the
  window ``[sink, history, block]``: the KV cache's attention-sink frames (the first stage-1 latent frames,
  ``sink_size``), the recent refined frames (history, trimmed to ``kv_max_frames - sink_size``), then the block
  (``kv_cache_mode`` "inject" and "inject_and_capture_post_rope"). Rules resolve on the window: ``at.frames[i]``
  counts the window's frames (sink first), the sink frames are the reference (``at.frames.reference``), and
  ``at.frames.generated`` the history and the block. DyMoS thus lowers what the block takes from the sink.
  The sink capture forward (``"capture_pre_rope"``) attends over the sink frames alone: all of them reference.
- ``attn2``: the text cross-attention (``attention="cross"``); its layout is the block's frames alone.
- The forward gets no frame grid (only packed tokens and a RoPE table built by the pipeline), so the adapter is
  told the latent grid: ``at.steer(pipe, rule, adapter=SanaWMRefinerAdapter(grid=(latent_height, latent_width)))``;
  without it a session raises at the first forward.
- Steps: the pipeline resets its scheduler for every block, so steps count within a block (the distilled 3-step
  schedule: steps 0..2); each block's history-capture forward at sigma 0 comes after its last step.
- Guidance: none (one conditional forward per step): every row "cond".
- Steered, not recorded: ``at.inspect`` raises on ``attn1`` (its queries are not its keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..contract.streams import StreamView
from ..errors import ConfigError, SteeringError
from ..language.layout import TokenLayout

INJECTING = ("inject", "inject_and_capture_post_rope")


class SanaWMRefinerAdapter(Adapter):
    family = "sana-wm-refiner"
    model_classes = ("SanaWMLTX2RefinerTransformer3DModel",)
    self_attention = r"transformer_blocks\.\d+\.attn1"
    cross_attention = r"transformer_blocks\.\d+\.attn2"
    text = "cross"
    branches = "cond-only"
    tested = ("own tests (tests/test_adapter_sana_wm_refiner.py, not the battery: no recordings): DyMoS and a "
              "history rule on the [sink, history, block] window against dense through the pipeline's AR loop, "
              "zero rule identity, clean exit, the missing grid and recording refused")
    table_entries = {"self-attention modules": "`transformer_blocks\\.\\d+\\.attn1` (queries: the active block; keys: "
                                               "the KV-cached window [sink, history, block]); cross-attention "
                                               "`transformer_blocks\\.\\d+\\.attn2`",
                     "reference frames": "the sink frames (window frames 0..sink_size-1)"}

    def __init__(self, grid: tuple[int, int] | None = None) -> None:
        if grid is not None and not (len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
            raise ConfigError(f"SanaWMRefinerAdapter grid must be (latent_height, latent_width) positive ints, got "
                              f"{grid!r}")
        self.grid = None if grid is None else tuple(grid)

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """The active block's video tokens, frame-major on the latent grid given to the adapter (the self-attention
        window adds the KV cache's sink and history frames before them)."""
        grid = self._token_grid(model)
        frames = _frames(int(inputs["hidden_states"].shape[1]), grid, "the active block")
        return TokenLayout(num_frames=frames, tokens_per_frame=grid[0] * grid[1], grid=grid, reference_frames=())

    def stream_views(self, model: torch.nn.Module, inputs: Mapping[str, Any], layout: TokenLayout) -> dict:
        """The self-attention window ``[sink, history, block]``: queries the block, keys the whole window."""
        mode, cache = inputs.get("kv_cache_mode"), inputs.get("kv_cache")
        sink = history = 0
        if mode in INJECTING:
            sink, history = _prefix(cache)
        grid = layout.grid
        sink_frames, history_frames = _frames(sink, grid, "the sink"), _frames(history, grid, "the history")
        frames = sink_frames + history_frames + layout.num_frames
        reference = range(frames) if mode == "capture_pre_rope" else range(sink_frames) if mode in INJECTING else (0,)
        window = TokenLayout(num_frames=frames, tokens_per_frame=layout.tokens_per_frame, grid=grid,
                             reference_frames=tuple(reference))
        prefix = sink + history
        return {"self": StreamView("self", window, (prefix, prefix + layout.seq_len), (0, prefix + layout.seq_len))}

    def _token_grid(self, model: torch.nn.Module) -> tuple[int, int]:
        if self.grid is None:
            raise SteeringError(
                f"{type(model).__name__}'s forward carries no frame grid (only packed tokens and a RoPE table), so "
                "attnsteer cannot map its tokens to latent frames: pass adapter=at.plugins.sana_wm_refiner."
                "SanaWMRefinerAdapter(grid=(latent_height, latent_width)) to at.steer"
            )
        config = model.config
        if config.patch_size_t != 1 or any(g % config.patch_size for g in self.grid):
            raise SteeringError(f"{type(model).__name__}: patch_size_t={config.patch_size_t}, patch_size="
                                f"{config.patch_size} on grid {self.grid}: attnsteer maps patch_size_t 1 and grids "
                                "divisible by the patch only")
        return self.grid[0] // config.patch_size, self.grid[1] // config.patch_size


def _prefix(cache: Any) -> tuple[int, int]:
    """(sink tokens, history tokens) the cache prepends to every layer's keys; raises where layers differ."""
    counts = set()
    for layer in cache.layer_caches:
        sink, history = layer.get_sink(), layer.get_history()
        counts.add((0 if sink is None else int(sink[0].shape[1]), 0 if history is None else int(history[0].shape[1])))
    if len(counts) != 1:
        raise SteeringError(f"the refiner's KV cache holds different (sink, history) token counts per layer: "
                            f"{sorted(counts)}; attnsteer needs one window layout per forward")
    return counts.pop()


def _frames(tokens: int, grid: tuple[int, int], what: str) -> int:
    per_frame = grid[0] * grid[1]
    if tokens % per_frame:
        raise SteeringError(f"{what} holds {tokens} tokens, not a whole number of {grid[0]}x{grid[1]} frames: is the "
                            "adapter's grid the refined latent's (latent_height, latent_width)?")
    return tokens // per_frame
