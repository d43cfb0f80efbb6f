"""``GenericAdapter``: steer or inspect any module whose forward calls F.scaled_dot_product_attention.

The user states the facts a built-in adapter knows for its family: the token layout (a
:class:`TokenLayout`, or a function of the model and its bound forward inputs), which submodules
are self-attention (a regex on module names, or a function returning (name, module) pairs) and,
optionally, the guidance branch of each batch row. Pass it as
``at.steer(model, rules, adapter=GenericAdapter(...))`` or ``at.inspect(model, adapter=...)``.
Without ``branches``, rows follow the pipeline's cache context as for built-in adapters; a bare
module has none, so rules with ``branch="cond"`` or ``"uncond"`` then raise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter
from ..contract.branches import branches_from_context
from ..errors import ConfigError
from ..language.layout import TokenLayout

LayoutSpec = TokenLayout | Callable[[torch.nn.Module, Mapping[str, Any]], TokenLayout]
AttentionSpec = str | Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module]]]
BranchSpec = Callable[[Mapping[str, Any], int], tuple[str, ...] | None]
BRANCHES = ("cond", "uncond")


class GenericAdapter(Adapter):
    """An adapter from user-given facts.

    - ``layout``: a TokenLayout, or ``layout(model, inputs) -> TokenLayout`` with ``inputs`` the
      model's forward arguments by name;
    - ``attention``: a regex that fully matches the names of the self-attention modules (as in
      ``model.named_modules()``), or ``attention(model) -> [(name, module), ...]`` in layer order;
    - ``branches``: ``branches(inputs, batch_size) -> ("uncond", "cond", ...)``, one per batch row,
      or None where unknown.
    """

    family = "generic"
    table_entries = {"family": "generic (`at.GenericAdapter`: any module calling F.scaled_dot_product_attention)",
                     "self-attention modules": "a regex on module names, or a function, given by the user",
                     "layout": "a `TokenLayout`, or a function of the forward's inputs, given by the user",
                     "reference frames": "from the layout"}
    tested = ("a pure-torch video transformer: rules against dense, a function picking the layers, a branch "
              "function picking the rows, frame maps against dense, clean exit, attention computed without SDPA "
              "raises, bad arguments raise")

    def __init__(self, layout: LayoutSpec, attention: AttentionSpec, branches: BranchSpec | None = None) -> None:
        if not isinstance(layout, TokenLayout) and not callable(layout):
            raise ConfigError(f"GenericAdapter(layout=...) must be a TokenLayout or a function, got {layout!r}")
        if isinstance(attention, str):
            try:
                re.compile(attention)
            except re.error as exc:
                raise ConfigError(f"GenericAdapter(attention=...) is not a valid regex: {attention!r} ({exc})") from exc
        elif not callable(attention):
            raise ConfigError(
                f"GenericAdapter(attention=...) must be a regex on module names or a function, got {attention!r}"
            )
        if branches is not None and not callable(branches):
            raise ConfigError(f"GenericAdapter(branches=...) must be None or a function, got {branches!r}")
        self._layout, self._attention, self._branches = layout, attention, branches
        if isinstance(attention, str):
            self.self_attention = attention

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The modules the ``attention`` regex matches, or those the ``attention`` function returns."""
        if isinstance(self._attention, str):
            return super().attention_modules(model)
        found = list(self._attention(model))
        if not all(_is_named_module(item) for item in found):
            raise ConfigError(f"GenericAdapter's attention function must return (name, module) pairs, got {found!r}")
        return found

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """As the user states it: a TokenLayout, or a function of the forward's inputs."""
        layout = self._layout if isinstance(self._layout, TokenLayout) else self._layout(model, inputs)
        if not isinstance(layout, TokenLayout):
            raise ConfigError(f"GenericAdapter's layout function must return a TokenLayout, got {layout!r}")
        return layout

    def branches(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], context: str | None, batch_size: int, pipeline: Any
    ) -> tuple[str, ...] | None:
        """From the user's ``branches`` function, else from the pipeline's cache context."""
        if self._branches is None:
            return branches_from_context(context, batch_size, pipeline)
        found = self._branches(inputs, batch_size)
        if found is None:
            return None
        found = tuple(found)
        if len(found) != batch_size or any(b not in BRANCHES for b in found):
            raise ConfigError(
                f"GenericAdapter's branches function must return None or one of {BRANCHES} per batch row "
                f"({batch_size} rows), got {found!r}"
            )
        return found


def _is_named_module(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.nn.Module)
