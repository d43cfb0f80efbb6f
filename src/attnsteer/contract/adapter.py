r"""The adapter interface: the facts attnsteer needs about one model family, in one place.

An adapter is declarative where the facts are static and has one function for what must be read
from each forward, the token layout::

    class MochiAdapter(Adapter):
        family = "mochi"
        model_classes = ("MochiTransformer3DModel",)          # class names, subclasses match too
        self_attention = r"transformer_blocks\.\d+\.attn1"     # regex fully matching module names
        text = "joint-after"                                  # where text sits: TEXT_PLACEMENTS
        branches = "batched-uncond-cond"                      # guidance convention: branches.CONVENTIONS

        def layout(self, model, inputs):  # its docstring's first line describes it in `attnsteer models`
            ...
            return self.token_layout(frames, (rows, cols), text=inputs["encoder_hidden_states"].shape[1])

A class like this in a module under ``attnsteer/plugins/`` or in a module named by an ``attnsteer``
entry point is registered by :mod:`attnsteer.contract.registry`; no hook function is written.
Declarations are checked when the class is defined (a bad value raises ``ConfigError`` naming the
class, the field and the allowed values).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch

from ..errors import ConfigError, SteeringError
from ..language.layout import Segment, TokenLayout
from .branches import CONVENTIONS, convention
from .modules import has_class_named, self_attention_modules
from .output_parts import OutputPart
from .streams import check_stream_declaration

TEXT_PLACEMENTS = ("joint-before", "joint-after", "cross", None)
TEXT_MEANINGS = {
    "joint-before": "in the self-attention sequence, before the video",
    "joint-after": "in the self-attention sequence, after the video",
    "cross": "in separate cross-attention",
    None: "none",
}


class Adapter:
    """What attnsteer asks of a model family. Declare the static facts as class attributes:

    - ``family``: a short name ("wan"), shown in errors, tables and recordings;
    - ``model_classes``: the class names of the models of this family (subclasses match too);
    - ``self_attention``: a regex fully matching the names of the self-attention modules, in
      ``model.named_modules()`` order (override ``attention_modules`` for another order);
    - ``cross_attention``: the same for separate text cross-attention modules (None: none);
    - ``text``: where the text tokens sit, one of :data:`TEXT_PLACEMENTS`;
    - ``branches``: the guidance convention, a name in :data:`~attnsteer.contract.branches.CONVENTIONS`
      (or a method ``branches(model, inputs, context, batch_size, pipeline)``);
    - ``reference_frames``: the latent frames holding the conditioning image (``token_layout`` uses them);
    - ``tiny_models``: the built-in tiny pipelines (``attnsteer.testing.tiny``) the shared test
      battery runs this family on; ``tested``: what the family's own tests check beyond it;
    - ``refusal``: set to the reason when the family's attention cannot be steered exactly; models
      of the family are then refused with that reason instead of being steered approximately;
    - ``table_entries``: texts for columns of ``attnsteer models`` that the declarations cannot give;
    - ``streams``: attention streams beside the video self-attention, kind -> regex on module names
      (kinds: :data:`attnsteer.contract.streams.STREAM_KINDS`); such a family also writes ``stream_views``.

    and write ``layout(model, inputs) -> TokenLayout`` (its docstring's first line describes the
    layout in ``attnsteer models``). The rest has defaults a family overrides only for its twists:
    ``timestep``, ``attention_branches``, ``output_parts``, ``blocks``, ``skipped_block_output``.
    """

    family: ClassVar[str] = "base"
    model_classes: ClassVar[tuple[str, ...]] = ()
    self_attention: ClassVar[str | None] = None
    cross_attention: ClassVar[str | None] = None
    text: ClassVar[str | None] = None
    branches: ClassVar[Any] = CONVENTIONS["context"]
    reference_frames: ClassVar[tuple[int, ...]] = (0,)
    tiny_models: ClassVar[tuple[str, ...]] = ()
    tested: ClassVar[str] = ""
    refusal: ClassVar[str | None] = None
    table_entries: ClassVar[Mapping[str, str]] = {}
    streams: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_declarations(cls)

    @classmethod
    def matches(cls, model: object) -> bool:
        """Whether ``model`` belongs to this family (by class name, without importing the class)."""
        return has_class_named(model, cls.model_classes)

    def attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The self-attention modules, in layer order, as (name, module)."""
        if self.self_attention is None:
            raise NotImplementedError(f"{type(self).__name__} declares no self_attention pattern")
        return self_attention_modules(model, self.self_attention)

    def cross_attention_modules(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """The separate text cross-attention modules, in layer order (none for joint-attention models)."""
        return [] if self.cross_attention is None else self_attention_modules(model, self.cross_attention)

    def stream_views(self, model: torch.nn.Module, inputs: Mapping[str, Any], layout: TokenLayout) -> Mapping[str, Any]:
        """Per declared stream kind, the :class:`~attnsteer.contract.streams.StreamView` of its calls in one forward
        (``layout``: the forward's self-attention layout); none by default. A "self" view replaces ``layout`` for
        the self-attention calls whose keys hold more than their queries (a KV cache of earlier forwards)."""
        return {}

    def layout(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> TokenLayout:
        """The :class:`TokenLayout` of the self-attention calls of one forward (``inputs``: its arguments by name)."""
        raise NotImplementedError(f"{type(self).__name__} must define layout(model, inputs)")

    def token_layout(self, num_frames: int, grid: tuple[int, int] | None, *, tokens_per_frame: int | None = None,
                     text: int = 0, text_name: str = "") -> TokenLayout:
        """A layout of ``num_frames`` frame-major frames of ``grid`` (rows, cols) tokens, with ``text`` text
        tokens placed as the class's ``text`` says, and its ``reference_frames``. Layouts are immutable: one built
        from the same numbers is reused (a forward's layout costs a lookup, not a validated construction)."""
        if text and self.text not in ("joint-before", "joint-after"):
            raise ConfigError(f"{type(self).__name__} declares text={self.text!r}: its self-attention has no text "
                              f"tokens, got text={text}")
        key = (self.text, tuple(self.reference_frames), num_frames, grid, tokens_per_frame, text, text_name)
        try:
            return _token_layout(*key)
        except TypeError:  # an unhashable number (a list for the grid): build it without the cache
            return _token_layout.__wrapped__(*key)

    def text_length(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> int | None:
        """How many text tokens the cross-attention calls of one forward see as keys (None: no cross-attention)."""
        if self.text != "cross" or inputs.get("encoder_hidden_states") is None:
            return None
        return int(inputs["encoder_hidden_states"].shape[1])

    def context_states(self, model: torch.nn.Module, embeds: torch.Tensor) -> torch.Tensor:
        """A second text context (``at.second_context``: the text encoder's output ``[B, L, D]``) as the cross-attention
        modules receive their text: through the model's own text projection (the base class refuses: no such path)."""
        raise SteeringError(f"{type(self).__name__} ({self.family}) gives no second text context to the cross-attention "
                            f"of {type(model).__name__} (Adapter.context_states); at.second_context / nag need it")

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

    def timestep(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> float | None:
        """The scalar timestep of one forward (the maximum of per-token timesteps; None if unknown)."""
        return scalar_timestep(inputs.get("timestep"))

    def latent_grid(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> tuple[int, int] | None:
        """(height, width) of one forward's video latent: the last two dims of a 5-D ``sample`` or ``hidden_states``
        input (None if neither is 5-D). Multi-pass blends read a temporal call's folded spatial grid from it."""
        for name in ("sample", "hidden_states"):
            value = inputs.get(name)
            if isinstance(value, torch.Tensor) and value.dim() == 5:
                return int(value.shape[-2]), int(value.shape[-1])
        return None

    def batch_size(self, inputs: Mapping[str, Any]) -> int:
        """The batch rows of one forward: those of its first tensor argument."""
        for value in inputs.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
        raise SteeringError("cannot tell the batch size: the model's forward got no tensor argument")

    def frame_timesteps(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> tuple[float, ...] | None:
        """Each latent frame's own timestep where a forward's frames sit at different noise levels (diffusion
        forcing); None (the default) where one timestep holds for the whole forward."""
        return None

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

    def call_view(self, layout: TokenLayout, branches: tuple[str, ...] | None, batch_size: int,
                  call: int) -> tuple[TokenLayout, tuple[str, ...] | None]:
        """The layout and per-row branches of the ``call``-th self-attention SDPA call (``batch_size`` rows) of
        one module forward, given its forward's ``layout`` and ``branches``. Default: the forward's layout and
        :meth:`attention_branches`; a model that makes one call per batch row over that row's valid tokens
        (Mochi) overrides it. A call's layout must have the forward's token groups for recordings."""
        return layout, self.attention_branches(branches, batch_size)

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


def scalar_timestep(t: Any) -> float | None:
    """A timestep argument as one number: the maximum of a tensor's values; None if absent or empty."""
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        if t.numel() == 1:  # the common case: one number, read without a reduction
            return float(t.detach())
        return float(t.detach().float().max()) if t.numel() else None
    return float(t)


@functools.lru_cache(maxsize=256)
def _token_layout(placement: str, reference_frames: tuple[int, ...], num_frames: int, grid: tuple[int, int] | None,
                  tokens_per_frame: int | None, text: int, text_name: str) -> TokenLayout:
    """:meth:`Adapter.token_layout` for a class whose text is placed as ``placement``."""
    per_frame = grid[0] * grid[1] if grid is not None else tokens_per_frame
    if per_frame is None:
        raise ConfigError("token_layout needs a grid or tokens_per_frame")
    video = num_frames * per_frame
    before = placement == "joint-before"
    segments = [Segment("text", 0 if before else video, text + (0 if before else video), name=text_name)] if text else []
    return TokenLayout(num_frames=num_frames, tokens_per_frame=per_frame, grid=grid, video_start=text if before else 0,
                       segments=segments, reference_frames=tuple(f for f in reference_frames if f < num_frames))


@functools.lru_cache(maxsize=64)
def _signature(forward: Any) -> inspect.Signature:
    """The signature of a model class's ``forward``, read once per class rather than at every forward."""
    return inspect.signature(forward)


class _Parameters(NamedTuple):
    """What binding a model class's ``forward`` arguments needs (see :func:`bind_forward_inputs`)."""

    positional: tuple[str, ...]  # the names positional arguments bind to, after ``self``
    keyword: frozenset[str]  # the names arguments may bind to by keyword
    order: tuple[str, ...]  # every name, in signature order


@functools.lru_cache(maxsize=64)
def _parameters(forward: Any) -> _Parameters | None:
    """The parameters of a model class's ``forward``; None where it takes ``*args`` or ``**kwargs`` (the general
    binding then runs)."""
    parameters = list(_signature(forward).parameters.values())[1:]
    kinds = inspect.Parameter
    if any(p.kind in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD) for p in parameters):
        return None
    return _Parameters(tuple(p.name for p in parameters if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)),
                       frozenset(p.name for p in parameters if p.kind is not kinds.POSITIONAL_ONLY),
                       tuple(p.name for p in parameters))


def bind_forward_inputs(model: torch.nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of one ``model.forward`` call by parameter name (defaults left out), in signature order."""
    forward = type(model).forward
    known = _parameters(forward)
    if known is not None and len(args) <= len(known.positional):  # the usual call: Signature.bind_partial's result, cheaper
        arguments = dict(zip(known.positional, args))
        if all(name in known.keyword and name not in arguments for name in kwargs):
            arguments.update(kwargs)
            return {name: arguments[name] for name in known.order if name in arguments}
    signature = _signature(forward)
    bound = signature.bind_partial(model, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)), None)  # self
    return arguments


def check_declarations(cls: type[Adapter]) -> None:
    """Refuse bad class-level declarations when the class is defined; a named ``branches`` becomes its convention."""
    owner = cls.__name__
    if not isinstance(cls.family, str) or not cls.family:
        raise ConfigError(f"{owner}.family must be a non-empty string, got {cls.family!r}")
    if isinstance(cls.model_classes, str) or not all(isinstance(c, str) for c in cls.model_classes):
        raise ConfigError(f"{owner}.model_classes must be a tuple of class names, got {cls.model_classes!r}")
    for field in ("self_attention", "cross_attention"):
        pattern = getattr(cls, field)
        if pattern is None:
            continue
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{owner}.{field} must be a regex on module names, got {pattern!r} ({exc})") from None
    check_stream_declaration(cls)
    if cls.text not in TEXT_PLACEMENTS:
        raise ConfigError(f"{owner}.text must be one of {TEXT_PLACEMENTS}, got {cls.text!r}")
    declared = cls.__dict__.get("branches")
    if declared is not None and not callable(declared):
        cls.branches = convention(declared, owner)
    if not all(isinstance(f, int) and f >= 0 for f in cls.reference_frames):
        raise ConfigError(f"{owner}.reference_frames must be a tuple of frame indices, got {cls.reference_frames!r}")
    if cls.refusal is not None and not (isinstance(cls.refusal, str) and cls.refusal):
        raise ConfigError(f"{owner}.refusal must be None or the reason the family is refused, got {cls.refusal!r}")
