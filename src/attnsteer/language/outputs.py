"""Output transforms: act on a self-attention module's output, after its output projection.

``at.output_scale(x)`` multiplies the module's output rows of the rule's query tokens (in the batch
rows of its branch) by ``x``: a number, or a :mod:`~attnsteer.language.readouts` readout taken from the
module's own SDPA call. It is not a logit edit, and not the same as scaling the attention output
before the projection: ``s * (W o + b) != W (s * o) + b`` (the projection has a bias).

Where the token rows sit in the module's output is the adapter's :meth:`Adapter.output_parts`.
The controller hands each module call's output rules to an :class:`OutputStage`: it takes the
readouts in the SDPA interception and applies the scales when the module's forward returns.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ..errors import ConfigError
from ..validation import real_number
from .readouts import Readout, ReadoutCall
from .transforms import Transform


def _factor(value: object) -> float | Readout:
    if isinstance(value, Readout):
        return value
    try:
        return real_number(value, "output_scale(factor)")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or a readout such as at.readouts.cross_frame_intensity(weight=4))") from None


class OutputTransform(Transform):
    """Base class of transforms applied to a module's output rows; they leave the logits alone."""

    kind = "output"

    def check_rule(self, rule: Any) -> None:
        if rule.heads is not None:
            raise ConfigError(f"Rule.heads must be None with {self!r}: it acts after the output projection, "
                              f"which mixes the heads; got heads={rule.heads}")
        if rule.pairs is not None:
            raise ConfigError(f"Rule.pairs must be None with {self!r}: it acts on output rows, not on "
                              f"(query, key) pairs; got pairs={rule.pairs!r}")
        if rule.attention != "self":
            raise ConfigError(f"Rule.attention must be 'self' with {self!r}: output transforms act on the "
                              f"self-attention modules; got attention={rule.attention!r}")

    def score(self, s, b, h, q_idx, kv_idx):
        raise ConfigError(f"{self!r} transforms a module's output, not attention logits")

    def factor(self, q: torch.Tensor, k: torch.Tensor, call: ReadoutCall) -> torch.Tensor | float:
        raise NotImplementedError


@attrs.frozen(repr=False, eq=False)
class OutputScale(OutputTransform):
    """Multiply the selected output rows by ``factor``: a number or a readout of the call."""

    by: float | Readout = attrs.field(converter=_factor)

    def factor(self, q: torch.Tensor, k: torch.Tensor, call: ReadoutCall) -> torch.Tensor | float:
        return self.by.read(q, k, call) if isinstance(self.by, Readout) else self.by

    def __repr__(self) -> str:
        return f"output_scale({self.by!r})" if isinstance(self.by, Readout) else f"output_scale({self.by:g})"


def output_scale(factor: float | Readout) -> OutputScale:
    """Scale the module's output rows of the rule's query tokens by ``factor`` (a number or a readout)."""
    return OutputScale(factor)


__all__ = ["OutputScale", "OutputTransform", "output_scale"]
