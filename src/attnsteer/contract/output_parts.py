"""Where a self-attention module's output holds its token rows: the adapter's answer that output transforms
(:mod:`attnsteer.language.outputs`) need to find the rows of their query tokens."""

from __future__ import annotations

import attrs
import torch


@attrs.frozen
class OutputPart:
    """A tensor of a module's output holding token rows [B, rows, C]: ``index`` None when the output
    is that tensor, else its position in the output tuple; ``positions`` the layout position of each row."""

    index: int | None
    positions: torch.Tensor
