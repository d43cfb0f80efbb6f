"""What an attention call knows about where it runs: its layer, its forward's state, and the
clients (sessions) it answers to. Shared by the controller, the per-call steering and the recorders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import torch

from .layout import TokenLayout
from .rules import Rule
from .schedules import StepInfo
from .selectors import SelectionContext


@attrs.frozen
class LayerInfo:
    """One self-attention module: its index among the model's self-attention layers and its names."""

    index: int
    name: str
    component: str

    @property
    def names(self) -> tuple[str, ...]:
        qualified = f"{self.component}.{self.name}" if self.component else self.name
        return (self.name, qualified)

    @property
    def qualified(self) -> str:
        return self.names[1]


@attrs.frozen
class ForwardState:
    """What one forward of the transformer looks like to its attention calls."""

    layout: TokenLayout
    step: StepInfo
    branches: tuple[str, ...] | None
    context: str | None
    text_length: int | None = None  # text keys of the separate cross-attention calls, if the model has them
    streams: Mapping[str, Any] | None = None  # kind -> streams.StreamView of the forward's audio/cross-modal calls


class Client(Protocol):
    """What a session attaches: rules to apply and/or a sink for attention mass."""

    rules: tuple[Rule, ...]
    wants_mass: bool

    def selection_context(self, layout: TokenLayout) -> SelectionContext:
        """What this client's selectors resolve against in a call of ``layout`` (its prompt's words)."""
        ...

    def on_call(self, state: ForwardState, layer: LayerInfo, applied: list[Rule], mass: torch.Tensor | None) -> None: ...
