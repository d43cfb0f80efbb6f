"""``GenericAdapter``: steer or inspect any module whose forward calls F.scaled_dot_product_attention.

Give it the token layout (a :class:`TokenLayout`, or a function of the model and its bound
forward inputs), which submodules are self-attention (a regex on module names, or a function
returning (name, module) pairs) and, optionally, how batch rows map to guidance branches.
Pass it as ``at.steer(model, rules, adapter=GenericAdapter(...))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import ConfigError
from ..layout import TokenLayout
from .base import Adapter, self_attention_modules

LayoutSpec = TokenLayout | Callable[[torch.nn.Module, Mapping[str, Any]], TokenLayout]
AttentionSpec = str | Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module]]]
BranchSpec = Callable[[Mapping[str, Any], int], tuple[str, ...] | None]


class GenericAdapter(Adapter):
    family = "generic"

    def __init__(self, layout: LayoutSpec, attention: AttentionSpec, branches: BranchSpec | None = None) -> None:
        if not isinstance(layout, TokenLayout) and not callable(layout):
            raise ConfigError(f"GenericAdapter(layout=...) must be a TokenLayout or a function, got {layout!r}")
        if not isinstance(attention, str) and not callable(attention):
            raise ConfigError(
                f"GenericAdapter(attention=...) must be a regex on module names or a function, got {attention!r}"
            )
        if branches is not None and not callable(branches):
            raise ConfigError(f"GenericAdapter(branches=...) must be None or a function, got {branches!r}")
        self._layout, self._attention, self._branches = layout, attention, branches

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        if isinstance(self._attention, str):
            return self_attention_modules(model, self._attention)
        return list(self._attention(model))

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        layout = self._layout if isinstance(self._layout, TokenLayout) else self._layout(model, inputs)
        if not isinstance(layout, TokenLayout):
            raise ConfigError(f"GenericAdapter's layout function must return a TokenLayout, got {layout!r}")
        return layout

    def branches(self, model, inputs, context, batch_size, pipeline) -> tuple[str, ...] | None:
        if self._branches is not None:
            return self._branches(inputs, batch_size)
        return super().branches(model, inputs, context, batch_size, pipeline)
