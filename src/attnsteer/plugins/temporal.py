"""Shared parts of the families whose frame-to-frame attention is a separate temporal call with space
folded into the batch, (videos x h x w, F): Latte, AnimateDiff's motion modules, the ModelScope UNets.

Such a call holds one token per frame, and its rows are video-major: row r belongs to video
r // (h*w). :class:`TemporalUNetAdapter` is the base of the UNet families, whose temporal
modules must be put in execution order (down blocks, mid block, up blocks), which is not the
order of ``named_modules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..contract.adapter import Adapter, self_attention_modules
from ..language.layout import TokenLayout


def per_position_branches(adapter: Adapter, branches: tuple[str, ...] | None,
                          batch_size: int) -> tuple[str, ...] | None:
    """The branch of each row of a temporal call whose batch folds the spatial positions in video-major:
    each video's branch repeated over its positions (other batch sizes: the base class decides)."""
    if branches is None or batch_size % len(branches):
        return Adapter.attention_branches(adapter, branches, batch_size)
    positions = batch_size // len(branches)
    return tuple(branch for branch in branches for _ in range(positions))


class TemporalUNetAdapter(Adapter):
    """A UNet with temporal self-attention over the frames: subclasses declare the patterns and
    ``execution_order``, the top-level module names in the order the forward runs them."""

    execution_order: ClassVar[tuple[str, ...]] = ("down_blocks", "mid_block", "up_blocks")

    def _in_execution_order(self, found: list[tuple[str, torch.nn.Module]]) -> list[tuple[str, torch.nn.Module]]:
        return sorted(found, key=lambda item: self.execution_order.index(item[0].split(".", 1)[0]))

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The temporal self-attention modules (not an ``attn2`` built for cross-attention), in execution order."""
        return self._in_execution_order([(name, module) for name, module in
                                         self_attention_modules(model, self.self_attention)
                                         if not getattr(module, "is_cross_attention", False)])

    def blocks(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The temporal transformer blocks, in execution order (what STG-R's block skip indexes)."""
        return self._in_execution_order(self_attention_modules(model, self.block_pattern))

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """The frames of the temporal calls, (videos x h x w, F): one token per frame."""
        return self.token_layout(inputs["sample"].shape[2], None, tokens_per_frame=1)

    def attention_branches(self, branches: tuple[str, ...] | None, batch_size: int) -> tuple[str, ...] | None:
        """Each video's branch repeated over its h*w spatial positions (temporal rows are video-major)."""
        return per_position_branches(self, branches, batch_size)
