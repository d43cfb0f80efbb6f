"""``GenericAdapter``: steer or inspect any module whose attention modules call F.scaled_dot_product_attention
(or flash-attn's functions), such as the authors' own Wan or HunyuanVideo code.

The user states the facts a built-in adapter knows for its family: which submodules are self-attention (a regex
on module names, or a function returning (name, module) pairs), the token layout (a :class:`TokenLayout`, a
function of the model and its bound forward inputs, or ``frames=`` and ``grid=``), and optionally the names of
the forward's timestep and hidden-state arguments and the guidance branch of each batch row. Pass it as
``at.steer(model, rules, adapter=GenericAdapter(...))``, or once with ``at.register_adapter(model, adapter)``.

Where the step and the branch come from: the timestep argument (``timestep=``, default ``"timestep"``) gives
the step by counting decreasing timesteps; the rows' branches follow the pipeline's cache context. A user's own
loop says both with ``.step(i, branch=...)`` on the object the session yields (see docs/extending.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..contract.adapter import Adapter, scalar_timestep
from ..contract.branches import branches_from_context
from ..errors import ConfigError
from ..language.layout import TokenLayout
from ..validation import integer

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

    def __init__(
        self,
        layout: LayoutSpec | None = None,
        attention: AttentionSpec | None = None,
        branches: BranchSpec | None = None,
        *,
        frames: int | None = None,
        grid: tuple[int, int] | None = None,
        reference_frames: tuple[int, ...] = (0,),
        timestep: str = "timestep",
        hidden_states: str = "hidden_states",
    ) -> None:
        """``attention`` is required; the layout is ``layout`` or, for a video-only sequence, ``frames`` x ``grid``
        (rows, cols) tokens with ``reference_frames``. ``timestep`` and ``hidden_states`` name the forward's
        arguments that hold the timestep and the tokens (the batch size is read from the latter)."""
        if attention is None:
            raise ConfigError("GenericAdapter(attention=...) is required: a regex on module names "
                              "(e.g. r'blocks\\.\\d+\\.self_attn') or a function model -> [(name, module), ...]")
        if layout is None:
            layout = _frames_layout(frames, grid, reference_frames)
        elif frames is not None or grid is not None:
            raise ConfigError("GenericAdapter: give layout=... or frames= and grid=, not both")
        if not isinstance(layout, TokenLayout) and not callable(layout):
            raise ConfigError(f"GenericAdapter(layout=...) must be a TokenLayout or a function, got {layout!r}")
        for field, name in (("timestep", timestep), ("hidden_states", hidden_states)):
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f"GenericAdapter({field}=...) must name an argument of the model's forward, got "
                                  f"{name!r}")
        self.timestep_argument, self.hidden_states_argument = timestep, hidden_states
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

    def timestep(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> float | None:
        """The forward's argument named by ``timestep=`` (the maximum where it is a tensor; None if absent)."""
        return scalar_timestep(inputs.get(self.timestep_argument))

    def batch_size(self, inputs: Mapping[str, Any]) -> int:
        """Rows of the forward's argument named by ``hidden_states=``, else of its first tensor argument."""
        tokens = inputs.get(self.hidden_states_argument)
        if isinstance(tokens, torch.Tensor) and tokens.dim() > 0:
            return int(tokens.shape[0])
        return super().batch_size(inputs)

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


def _frames_layout(frames: object, grid: object, reference_frames: tuple[int, ...]) -> TokenLayout:
    """The video-only layout of ``frames`` latent frames of ``grid`` (rows, cols) tokens each."""
    if frames is None or grid is None:
        raise ConfigError("GenericAdapter needs layout=... (a TokenLayout or a function of the forward's inputs) or "
                          "both frames= (latent frames) and grid= ((rows, cols) tokens per frame)")
    frames = integer(frames, "GenericAdapter(frames=...)", minimum=1)
    try:
        rows, cols = (integer(n, "GenericAdapter(grid=...)", minimum=1) for n in grid)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"GenericAdapter(grid=...) must be (rows, cols) of positive ints, got {grid!r}") from None
    return TokenLayout(num_frames=frames, tokens_per_frame=rows * cols, grid=(rows, cols),
                       reference_frames=tuple(reference_frames))


def _is_named_module(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.nn.Module)
