"""Transforms: what a rule does to the pre-softmax logits of the (query, key) pairs it selects.

Every transform here is a constant logit bias per pair of token groups, which the fused kernel
applies exactly; several rules on the same pair add their biases.
"""

from __future__ import annotations

import math

import attrs

from .errors import ConfigError


class Transform:
    """Base class: a constant added to the selected logits."""

    @property
    def logit_bias(self) -> float:
        raise NotImplementedError


def _number(name: str, field: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ConfigError(f"{name}({field}) must be a real number (not NaN), got {value!r}")
    return float(value)


@attrs.frozen(repr=False)
class Bias(Transform):
    """Add ``value`` to the logits (``-inf`` blocks)."""

    value: float

    def __attrs_post_init__(self) -> None:
        v = _number("bias", "value", self.value)
        if v == math.inf:
            raise ConfigError("bias(value) must not be +inf (it would put all mass on the selected keys); use a finite value")
        object.__setattr__(self, "value", v)

    @property
    def logit_bias(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"bias({self.value:g})"


@attrs.frozen(repr=False)
class Scale(Transform):
    """Multiply the unnormalised attention weight by ``factor >= 0``: ``bias(log(factor))``."""

    factor: float

    def __attrs_post_init__(self) -> None:
        f = _number("scale", "factor", self.factor)
        if f < 0 or math.isinf(f):
            raise ConfigError(f"scale(factor) must be a finite number >= 0, got {self.factor!r}")
        object.__setattr__(self, "factor", f)

    @property
    def logit_bias(self) -> float:
        return math.log(self.factor) if self.factor > 0 else -math.inf

    def __repr__(self) -> str:
        return f"scale({self.factor:g})"


@attrs.frozen(repr=False)
class Block(Transform):
    """Give the selected pairs zero attention weight."""

    @property
    def logit_bias(self) -> float:
        return -math.inf

    def __repr__(self) -> str:
        return "block()"


bias = Bias
scale = Scale
block = Block
