"""What an attention call knows about where it runs: its layer, its forward's state, and the
clients (sessions) it answers to. Shared by the controller, the per-call steering and the recorders."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import torch

from ..contract.branches import item_of_rows
from ..language.layout import TokenLayout
from ..language.model_layers import ModelDepth
from ..language.rules import Rule
from ..language.schedules import StepInfo
from ..language.selectors import SelectionContext


@attrs.frozen
class LayerInfo:
    """One attention module: its index among the model's modules of its kind, its names, and (``model``) the
    family and module count that model-relative layer filters read."""

    index: int
    name: str
    component: str
    model: ModelDepth | None = None

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
    latent: tuple[int, int, int] | None = None  # (videos, height, width) of the forward's video latent input


class Client(Protocol):
    """What a session attaches: rules to apply and/or a sink for attention mass."""

    rules: tuple[Rule, ...]
    wants_mass: bool

    def selection_context(self, layout: TokenLayout) -> SelectionContext:
        """What this client's selectors resolve against in a call of ``layout`` (its prompt's words)."""
        ...

    def on_call(self, state: ForwardState, layer: LayerInfo, applied: list[Rule], mass: torch.Tensor | None) -> None: ...


def client_rows(client: Client, branches: tuple[str, ...] | None, batch: int) -> tuple[bool, ...] | None:
    """The rows of a call that belong to a client with a ``batch_item`` (index, count) share, else None."""
    item = getattr(client, "batch_item", None)
    if item is None:
        return None
    index, count = item
    return tuple(i == index for i in item_of_rows(branches, batch, count))


def notify(client: Client, state: ForwardState, layer: LayerInfo, applied: list[Rule], mass: torch.Tensor | None,
            rows: tuple[bool, ...] | None) -> None:
    """``client.on_call``, seeing only its own rows (branches and mass) when it has a batch share."""
    if rows is not None:
        keep = [r for r, on in enumerate(rows) if on]
        branches = None if state.branches is None else tuple(state.branches[r] for r in keep)
        state = attrs.evolve(state, branches=branches)
        mass = None if mass is None else mass[keep]
    client.on_call(state, layer, applied, mass)


def sdpa_arguments(args: tuple, kwargs: dict) -> tuple:
    """F.scaled_dot_product_attention's arguments by name, with its defaults."""
    if (len(args) == 3 and not kwargs.keys() - _DEFAULTS.keys()) or (not args and kwargs.keys() >= _QKV):  # usual calls
        get = kwargs.get
        q, k, v = args or (kwargs["query"], kwargs["key"], kwargs["value"])
        return (q, k, v, get("attn_mask"), get("dropout_p", 0.0), get("is_causal", False), get("scale"),
                get("enable_gqa", False))
    values = dict(_DEFAULTS)
    values.update(zip(_NAMES, args))
    values.update(kwargs)
    return tuple(values[n] for n in _NAMES)


_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_QKV = frozenset(("query", "key", "value"))
_DEFAULTS = types.MappingProxyType({"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                                     "enable_gqa": False})
