"""Output transforms at run time: an :class:`OutputStage` takes one module call's output rules, their readouts in
the SDPA interception, and applies the scales to the module's output rows when its forward returns (see
:mod:`attnsteer.language.outputs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError, SteeringError, describe_rule
from ..language.layout import TokenLayout
from ..language.readouts import ReadoutCall
from .plan import Selection, select


def split_output_rules(active: Sequence[tuple[Any, Any]]) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    """(logit rules, output rules) of a module call's active ``(client, rule)`` pairs (multi-pass rules are neither:
    :mod:`attnsteer.runtime.multi_pass`)."""
    logits = [pair for pair in active if pair[1].transform.kind not in ("output", "passes")]
    outputs = [pair for pair in active if pair[1].transform.kind == "output"]
    return logits, outputs


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
