"""The adapter interface: the facts attnsteer needs about one model family, in one place."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import SteeringError
from ..layout import TokenLayout
from ..outputs import OutputPart
from .branches import branches_from_context


class Adapter:
    """What attnsteer asks of a model family. Subclass it and return it from ``attnsteer_adapter``.

    - ``attention_modules``: the self-attention modules, in layer order, as (name, module);
    - ``layout``: the :class:`TokenLayout` of the self-attention calls of one forward;
    - ``timestep``: the scalar timestep of one forward (None if unknown);
    - ``branches``: the guidance branch ("cond"/"uncond") of each batch row, or None if unknown;
    - ``attention_branches``: the branch of each row of one attention call, from ``branches``
      (the same rows unless the model folds other axes into the attention batch);
    - ``output_parts``: where the layout's tokens sit in a self-attention module's output (for
      output transforms such as ``at.output_scale``).
    """

    family: str = "base"

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        raise NotImplementedError

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        raise NotImplementedError

    block_pattern: str = r"(transformer_blocks|blocks)\.\d+"

    def blocks(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The transformer blocks, in order (what STG-R's block skip indexes)."""
        return self_attention_modules(model, self.block_pattern)

    def skipped_block_output(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        """What a skipped block returns: its input streams in the places of its outputs (``hidden_states``,
        and ``encoder_hidden_states`` for joint-attention blocks), read from the block metadata diffusers'
        own layer-skip hook uses."""
        from diffusers.hooks._helpers import TransformerBlockRegistry

        try:
            meta = TransformerBlockRegistry.get(type(block))
        except ValueError:
            raise SteeringError(
                f"{type(self).__name__}: cannot skip a {type(block).__name__} block: diffusers' block registry does "
                "not say which of its inputs and outputs are the hidden states"
            ) from None
        hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
        if meta.return_encoder_hidden_states_index is None:
            return hidden
        text = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
        out = [None, None]
        out[meta.return_hidden_states_index], out[meta.return_encoder_hidden_states_index] = hidden, text
        return tuple(out)

    def cross_attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The separate text cross-attention modules, in layer order (none for joint-attention models)."""
        return []

    def text_length(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> int | None:
        """How many text tokens the cross-attention calls of one forward see as keys (None: no cross-attention)."""
        return None

    def timestep(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> float | None:
        t = inputs.get("timestep")
        if t is None:
            return None
        if isinstance(t, torch.Tensor):
            return float(t.detach().float().max()) if t.numel() else None
        return float(t)

    def branches(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], context: str | None, batch_size: int, pipeline: Any
    ) -> tuple[str, ...] | None:
        return branches_from_context(context, batch_size, pipeline)

    def attention_branches(self, branches: tuple[str, ...] | None, batch_size: int) -> tuple[str, ...] | None:
        """The branch of each of the ``batch_size`` rows of one self-attention call, given the
        forward's per-row ``branches``. Attention rows are the forward's rows here; an adapter whose
        model folds frames or positions into the batch (SVD's temporal attention) overrides this."""
        if branches is None or len(branches) == batch_size:
            return branches
        raise SteeringError(
            f"{type(self).__name__}: a self-attention call has {batch_size} batch rows but its forward has "
            f"{len(branches)}; the adapter must say which guidance branch each attention row belongs to"
        )

    def output_parts(self, output: Any, layout: TokenLayout, module: str) -> tuple[OutputPart, ...]:
        """The tensors of a self-attention module's output that hold token rows, with the layout position
        of each row. Understood here: one [B, seq_len, C] tensor in layout order (Wan ``attn1``), or a
        ``(video [B, video tokens, C], rest [B, other tokens, C] or None)`` tuple (CogVideoX ``attn1``,
        HunyuanVideo ``attn``), the rest in layout order; override for other conventions."""
        positions = torch.arange(layout.seq_len)
        video = (positions >= layout.video_start) & (positions < layout.video_end)
        if _rows(output) == layout.seq_len:
            return (OutputPart(None, positions),)
        if isinstance(output, tuple) and len(output) == 2 and _rows(output[0]) == int(video.sum()):
            rest = positions[~video]
            if output[1] is None and not rest.numel():
                return (OutputPart(0, positions[video]),)
            if _rows(output[1]) == rest.numel():
                return (OutputPart(0, positions[video]), OutputPart(1, rest))
        raise SteeringError(
            f"self-attention module {module!r} returned {_describe(output)}; {type(self).__name__} expects a "
            f"[B, {layout.seq_len}, C] tensor in layout order or a (video [B, {int(video.sum())}, C], rest "
            f"[B, {layout.seq_len - int(video.sum())}, C]) tuple for layout {layout.describe()} "
            "(override Adapter.output_parts for other outputs)"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} family={self.family!r}>"


def _rows(value: Any) -> int | None:
    """The token count of a [B, rows, C] tensor, else None."""
    return int(value.shape[1]) if isinstance(value, torch.Tensor) and value.dim() == 3 else None


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple):
        return "a tuple (" + ", ".join(_describe(v) for v in value) + ")"
    return f"a {type(value).__name__}"


def bind_forward_inputs(model: torch.nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of one ``model.forward`` call by parameter name (defaults left out)."""
    signature = inspect.signature(type(model).forward)
    bound = signature.bind_partial(model, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)), None)  # self
    return arguments


def has_class_named(model: object, names: tuple[str, ...]) -> bool:
    """Whether ``model`` is an instance of a class called one of ``names`` (subclasses too), without importing it."""
    return any(cls.__name__ in names for cls in type(model).__mro__)


def self_attention_modules(model: torch.nn.Module, pattern: str) -> list[tuple[str, torch.nn.Module]]:
    """Submodules whose qualified name fully matches ``pattern``, in registration order."""
    regex = re.compile(pattern)
    return [(name, m) for name, m in model.named_modules() if regex.fullmatch(name)]
