"""Transforms: what a rule does to the attention of the (query, key) pairs it selects.

Logit transforms follow FlexAttention's ``score_mod`` contract: ``score(s, b, h, q_idx, kv_idx)``
maps the scaled pre-softmax logits ``s = q.k * scale`` of the selected pairs to new logits, with
broadcastable index tensors for the batch row, head, query and key.

Every transform declares its kernel path with one class attribute, :attr:`Transform.kind` (as
FlexAttention separates ``score_mod`` from ``mask_mod``); the runtime reads nothing else to choose:

- ``"constant"``: ``constant_bias`` (a float; ``-inf`` blocks) is added to every selected logit. Runs on
  the fused grouped kernel; several constants on the same pair add (``bias``, ``scale``, ``block``).
- ``"per_query"``: ``per_query`` (a float tensor [seq_len], set once bound to a layout) is added to the
  logits of each selected query. Runs on the grouped kernel too (``query_bias``).
- ``"score"``: ``score(...)`` computes the new logits. Runs on the exact chunked score path, applied in
  the order the rules were given (``logit_scale``, ``fill``, ``score_mod``, the default).
- ``"identity"``: not a logit edit; selected queries attend only to themselves (output = V).
- ``"output"``: not a logit edit; ``factor(...)`` scales the module's output rows
  (:class:`~attnsteer.language.outputs.OutputTransform`).
- ``"query"``: not a logit edit; ``apply(q)`` transforms the selected queries before the logits
  (:class:`~attnsteer.language.query_transforms.QueryTransform`).
- ``"passes"``: not a logit edit; the call runs once per pass and the outputs are combined
  (:class:`~attnsteer.language.passes.MultiPass`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import attrs
import torch

from ..errors import ConfigError
from ..validation import real_number
from .layout import TokenLayout

MAX_BIAS = 1e30  # larger finite biases overflow float32 logits once added up


TRANSFORM_KINDS = ("constant", "per_query", "score", "identity", "output", "context", "query", "passes")


class Transform:
    """Base class of every transform; a subclass sets :attr:`kind` (its kernel path, see the module docstring)
    and what that kind reads: ``constant_bias``, ``per_query`` or ``score``."""

    kind: str = "score"
    constant_bias: float | None = None  # kind "constant": the logit added to every selected pair
    per_query: torch.Tensor | None = None  # kind "per_query": values [seq_len] added per query, once bound

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str) and kind not in TRANSFORM_KINDS:
            raise ConfigError(f"{cls.__name__}.kind must be one of {TRANSFORM_KINDS}, got {kind!r}")

    @property
    def identity(self) -> bool:
        """Whether this is identity attention (``kind == "identity"``; derived, never set)."""
        return self.kind == "identity"
    # score() sees the logits of keys centred over the call (k - mean of k; SageAttention's smooth_k), which
    # differ from the raw logits by a per-query constant: it matters only to rules that read the logits' sign
    centred_keys: bool = False

    @property
    def logit_bias(self) -> float:
        if self.constant_bias is None:
            raise ConfigError(f"{self!r} is not a constant logit bias")
        return self.constant_bias

    def score(self, s: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor,
              kv_idx: torch.Tensor) -> torch.Tensor:
        """New logits for the selected pairs (FlexAttention ``score_mod`` contract)."""
        return s + self.logit_bias

    def call_scale(self, layout: TokenLayout) -> float | None:
        """For a uniform logit scale: its factor in this call (folded into SDPA's ``scale`` when it
        covers every pair); None for other transforms."""
        return None

    def bind(self, layout: TokenLayout) -> Transform:
        """This transform for one call's layout (most transforms do not depend on it)."""
        return self

    def check_rule(self, rule: Any) -> None:
        """Raise ConfigError when ``rule``'s other fields cannot go with this transform (called by Rule)."""


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _number(name: str, field: str, value: object) -> float:
    """A real number of any type; -inf and +inf pass here, each transform decides."""
    return real_number(value, f"{name}({field})", allow_inf=True)


def _finite(name: str, field: str, value: object) -> float:
    return real_number(value, f"{name}({field})")


def _logit_factor(name: str, field: str, value: object) -> float:
    """A finite logit multiplier of magnitude <= MAX_BIAS: larger ones overflow float32 logits (NaN outputs)."""
    factor = _finite(name, field, value)
    if abs(factor) > MAX_BIAS:
        raise ConfigError(f"{name}({field}) must have magnitude <= {MAX_BIAS:g} (larger factors overflow float32 "
                          f"logits into NaN), got {value!r}")
    return factor


@attrs.frozen(repr=False)
class Bias(Transform):
    """Add ``value`` to the logits (``-inf`` blocks)."""

    kind = "constant"
    value: float

    def __attrs_post_init__(self) -> None:
        v = _number("bias", "value", self.value)
        if v == math.inf:
            raise ConfigError("bias(value) must not be +inf (it would put all mass on the selected keys); use a finite value")
        if not math.isinf(v) and abs(v) > MAX_BIAS:
            raise ConfigError(f"bias(value) must be -inf or a number of magnitude <= {MAX_BIAS:g} (float32 logits), "
                              f"got {self.value!r}")
        object.__setattr__(self, "value", v)

    @property
    def constant_bias(self) -> float:  # type: ignore[override]
        return self.value

    def __repr__(self) -> str:
        return f"bias({self.value:g})"


@attrs.frozen(repr=False)
class Scale(Transform):
    """Multiply the unnormalised attention weight by ``factor >= 0``: ``bias(log(factor))``."""

    kind = "constant"
    factor: float

    def __attrs_post_init__(self) -> None:
        f = _number("scale", "factor", self.factor)
        if f < 0 or math.isinf(f):
            raise ConfigError(f"scale(factor) must be a finite number >= 0, got {self.factor!r}")
        object.__setattr__(self, "factor", f)

    @property
    def constant_bias(self) -> float:  # type: ignore[override]
        return math.log(self.factor) if self.factor > 0 else -math.inf

    def __repr__(self) -> str:
        return f"scale({self.factor:g})"


@attrs.frozen(repr=False)
class Block(Transform):
    """Give the selected pairs zero attention weight."""

    kind = "constant"
    constant_bias = -math.inf

    def __repr__(self) -> str:
        return "block()"


@attrs.frozen(repr=False)
class LogitScale(Transform):
    """Multiply the selected logits by ``factor`` (a temperature of ``1 / factor``)."""

    factor: float = attrs.field(converter=lambda v: _logit_factor("logit_scale", "factor", v))

    def score(self, s, b, h, q_idx, kv_idx):
        return s * self.factor

    def call_scale(self, layout: TokenLayout) -> float:
        return self.factor

    def __repr__(self) -> str:
        return f"logit_scale({self.factor:g})"


def _positive_int(name: str):
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 2:
            raise ConfigError(f"{name} must be an int >= 2 (a token count), got {value!r}")
        return int(value)

    return convert


@attrs.frozen(repr=False)
class ProportionalScale(Transform):
    """Proportional attention: logits times ``sqrt(log(N) / log(train_tokens))`` for a call of N tokens
    (Lumina-Next's rule for sequences longer than training; 1 at the training length)."""

    train_tokens: int = attrs.field(converter=_positive_int("proportional(train_tokens)"))

    def call_scale(self, layout: TokenLayout) -> float:
        return math.sqrt(math.log(layout.seq_len) / math.log(self.train_tokens))

    def bind(self, layout: TokenLayout) -> Transform:
        return LogitScale(self.call_scale(layout))

    def __repr__(self) -> str:
        return f"proportional(train_tokens={self.train_tokens})"


@attrs.frozen(repr=False)
class ScaleIfPositive(Transform):
    """Multiply positive logits by ``factor`` and keep the others (UltraViCo's far-pair rule)."""

    factor: float = attrs.field(converter=lambda v: _logit_factor("scale_if_positive", "factor", v))

    def score(self, s, b, h, q_idx, kv_idx):
        return torch.where(s > 0, s * self.factor, s)

    def __repr__(self) -> str:
        return f"scale_if_positive({self.factor:g})"


@attrs.frozen(repr=False)
class Fill(Transform):
    """Replace the selected logits by ``value``.

    Not the same as a bias: ``bias(-1e4)`` keeps a row's relative logits, ``fill(-1e4)`` or
    ``fill(torch.finfo(torch.float32).min)`` makes the filled keys of a row equally likely (a fully
    filled row becomes uniform), and ``fill(-inf)`` blocks (a row left with no key raises).
    """

    value: float = attrs.field(converter=lambda v: _number("fill", "value", v))

    def __attrs_post_init__(self) -> None:
        if self.value == math.inf:
            raise ConfigError("fill(value) must not be +inf")
        if not math.isinf(self.value) and abs(self.value) > FLOAT32_MAX:
            raise ConfigError(f"fill(value) must be -inf or a number of magnitude <= {FLOAT32_MAX:g} (float32 logits), "
                              f"got {self.value!r}")

    def score(self, s, b, h, q_idx, kv_idx):
        return torch.full_like(s, self.value)

    def __repr__(self) -> str:
        return f"fill({self.value:g})"


def _query_values(value: object) -> Any:
    if callable(value):
        return value
    values = torch.as_tensor(value)
    if values.dim() != 1 or not values.dtype.is_floating_point or not bool(torch.isfinite(values).all()):
        raise ConfigError(
            f"query_bias(values) must be a finite float tensor [seq_len] or a function of the layout, got {value!r}"
        )
    return values.detach().cpu()


@attrs.frozen(repr=False, eq=False)
class QueryBias(Transform):
    """Add a per-query value to the selected logits: ``values[q_idx]``, with ``values`` a float
    tensor [seq_len] or a function ``values(layout) -> tensor [seq_len]`` (e.g. a region-size term)."""

    kind = "per_query"
    values: Any = attrs.field(converter=_query_values)

    def for_layout(self, layout: TokenLayout) -> torch.Tensor:
        values = _query_values(self.values(layout)) if callable(self.values) else self.values
        if values.shape != (layout.seq_len,):
            raise ConfigError(f"{self!r} gives {tuple(values.shape)} values for a call of {layout.seq_len} tokens")
        return values

    def bind(self, layout: TokenLayout) -> Transform:
        return _BoundQueryBias(self.for_layout(layout))

    def __repr__(self) -> str:
        return f"query_bias({getattr(self.values, '__name__', 'tensor')})"


@attrs.frozen(eq=False)
class _BoundQueryBias(Transform):
    """:class:`QueryBias` bound to one call's layout: its ``per_query`` values are known."""

    kind = "per_query"
    values: torch.Tensor

    @property
    def per_query(self) -> torch.Tensor:  # type: ignore[override]
        return self.values

    def score(self, s, b, h, q_idx, kv_idx):
        return s + self.values.to(s.device, s.dtype)[q_idx]


@attrs.frozen(repr=False, eq=False)
class ScoreMod(Transform):
    """A user score function ``fn(score, b, h, q_idx, kv_idx) -> score`` (FlexAttention's contract),
    applied elementwise to the selected pairs; index tensors are global positions in the call."""

    fn: Callable[..., torch.Tensor]
    name: str = ""

    def __attrs_post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError(f"score_mod(fn) must be callable, got {self.fn!r}")

    def score(self, s, b, h, q_idx, kv_idx):
        out = self.fn(s, b, h, q_idx, kv_idx)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"{self!r} must return a tensor, got {type(out).__name__}")
        if out.dtype != s.dtype:
            raise ConfigError(f"{self!r} must return scores of the dtype it was given ({s.dtype}), got {out.dtype}")
        try:
            return torch.broadcast_to(out, s.shape)
        except RuntimeError:
            raise ConfigError(f"{self!r} must return a tensor broadcastable to the scores' shape {tuple(s.shape)}, "
                              f"got {tuple(out.shape)}") from None

    def __repr__(self) -> str:
        return f"score_mod({self.name or getattr(self.fn, '__name__', 'fn')})"


@attrs.frozen(repr=False)
class Identity(Transform):
    """Identity attention: each selected query attends only to itself, so its output is its value
    row (PAG's and STG-A's perturbation; diffusers' ``skip_attention_scores``)."""

    kind = "identity"

    def score(self, s, b, h, q_idx, kv_idx):
        return torch.where(q_idx == kv_idx, s, torch.full_like(s, -math.inf))

    def __repr__(self) -> str:
        return "identity()"


bias = Bias
scale = Scale
block = Block
logit_scale = LogitScale
scale_if_positive = ScaleIfPositive
fill = Fill
query_bias = QueryBias
identity = Identity


def temperature(t: float) -> LogitScale:
    """Divide the selected logits by ``t`` (> 0): ``logit_scale(1 / t)``."""
    value = _finite("temperature", "t", t)
    if value < 1 / MAX_BIAS:
        raise ConfigError(f"temperature(t) must be >= {1 / MAX_BIAS:g} (> 0; smaller ones overflow float32 logits "
                          f"into NaN), got {t!r}")
    return LogitScale(1.0 / value)


def proportional(train_tokens: int) -> ProportionalScale:
    """Proportional attention for calls longer (or shorter) than ``train_tokens`` tokens."""
    return ProportionalScale(train_tokens)


def score_mod(fn: Callable[..., torch.Tensor], name: str = "") -> ScoreMod:
    """A FlexAttention-style score function applied to the selected pairs."""
    return ScoreMod(fn, name)
