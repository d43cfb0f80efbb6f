"""Output transforms: act on a self-attention module's output, after its output projection.

``at.output_scale(x)`` multiplies the module's output rows of the rule's query tokens (in the batch
rows of its branch) by ``x``: a number, or a :mod:`~attnsteer.readouts` readout taken from the
module's own SDPA call. It is not a logit edit, and not the same as scaling the attention output
before the projection: ``s * (W o + b) != W (s * o) + b`` (the projection has a bias).

Where the token rows sit in the module's output is the adapter's :meth:`Adapter.output_parts`.
The controller hands each module call's output rules to an :class:`OutputStage`: it takes the
readouts in the SDPA interception and applies the scales when the module's forward returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from .errors import ConfigError, SteeringError, describe_rule
from .layout import TokenLayout
from .plan import Selection, select
from .readouts import Readout, ReadoutCall
from .transforms import Transform
from .validation import real_number


def _factor(value: object) -> float | Readout:
    if isinstance(value, Readout):
        return value
    try:
        return real_number(value, "output_scale(factor)")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or a readout such as at.readouts.cross_frame_intensity(weight=4))") from None


class OutputTransform(Transform):
    """Base class of transforms applied to a module's output rows; they leave the logits alone."""

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


def split_output_rules(active: Sequence[tuple[Any, Any]]) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    """(logit rules, output rules) of a module call's active ``(client, rule)`` pairs."""
    logits = [pair for pair in active if not isinstance(pair[1].transform, OutputTransform)]
    outputs = [pair for pair in active if isinstance(pair[1].transform, OutputTransform)]
    return logits, outputs


@attrs.frozen
class OutputPart:
    """A tensor of a module's output holding token rows [B, rows, C]: ``index`` None when the output
    is that tensor, else its position in the output tuple; ``positions`` the layout position of each row."""

    index: int | None
    positions: torch.Tensor


class OutputStage:
    """The output rules of one call of one self-attention module (see the module docstring)."""

    def __init__(self, rules: list[tuple[Any, Any]], module: str, adapter: Any) -> None:
        self.rules = rules
        self.module = module
        self.adapter = adapter
        self.factors: list[tuple[Selection, torch.Tensor | float]] = []
        self.batch: int | None = None

    def read(self, q: torch.Tensor, k: torch.Tensor, scale: float | None, layout: TokenLayout,
             branches: tuple[str, ...] | None) -> list[tuple[Any, Any]]:
        """Resolve the rules against this self-attention call and take their factors; the applied pairs."""
        if self.batch is not None:
            raise SteeringError(f"{self._where(self.rules[0][1])}: the module made more than one self-attention "
                                "call; an output transform needs exactly one per module call")
        self.batch = q.shape[0]
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        applied = []
        for client, rule in self.rules:
            try:
                s = select(rule, client.selection_context(layout), branches, q.shape[0], q.shape[1])
                if not (s.rows.any() and s.query.any()):
                    continue
                call = ReadoutCall(layout, s.key, scale, self.adapter.family)
                if bool(s.rows.all()):
                    factor = rule.transform.factor(q, k, call)
                else:
                    rows = s.rows.nonzero().flatten().to(q.device)
                    factor = rule.transform.factor(q.index_select(0, rows), k.index_select(0, rows), call)
            except (ConfigError, SteeringError) as exc:
                raise type(exc)(f"{self._where(rule)}: {exc}") from exc
            self.factors.append((s, factor))
            applied.append((client, rule))
        return applied

    def apply(self, output: Any, layout: TokenLayout) -> Any:
        """The module's output with every factor applied to its selected rows, in rule order."""
        if not self.factors:
            return output
        parts = self.adapter.output_parts(output, layout, self.module)
        items = [output] if parts[0].index is None else list(output)
        for part in parts:
            slot = 0 if part.index is None else part.index
            tensor = items[slot]
            if tensor.shape[0] != self.batch:
                raise SteeringError(f"self-attention module {self.module!r} returned {tensor.shape[0]} batch rows "
                                    f"but its attention call had {self.batch}")
            for s, factor in self.factors:
                queries = s.query[part.positions]
                if bool(s.rows.all() and queries.all()):
                    tensor = tensor * factor
                elif bool(queries.any()):
                    where = s.rows.to(tensor.device)[:, None, None] & queries.to(tensor.device)[None, :, None]
                    tensor = torch.where(where, tensor * factor, tensor)
            items[slot] = tensor
        return items[0] if parts[0].index is None else type(output)(items)

    def _where(self, rule: Any) -> str:
        return describe_rule(rule, self.module)


__all__ = ["OutputPart", "OutputScale", "OutputStage", "OutputTransform", "output_scale", "split_output_rules"]
