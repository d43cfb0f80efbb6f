"""Compile the rules that are on for one attention call into a group-level logit bias.

The result is the smallest broadcast form the kernel takes: ``[Gq, Gk]`` when every batch row
and head gets the same bias, ``[B, Gq, Gk]`` when branches differ, ``[B, H, Gq, Gk]`` when a
rule filters heads; ``None`` when no rule selects any pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .errors import ConfigError
from .layout import TokenLayout
from .rules import Rule


def rule_rows(rule: Rule, branches: Sequence[str] | None, batch_size: int) -> list[int]:
    """The batch rows a rule applies to; raises when its branch cannot be told for this call."""
    if rule.branch == "all":
        return list(range(batch_size))
    if branches is None:
        raise ConfigError(
            f"branch={rule.branch!r} needs the guidance branch of each batch row, which is unknown for this call "
            "(no cache_context from a pipeline); steer the pipeline, or use branch='all'"
        )
    return [row for row, b in enumerate(branches) if b == rule.branch]


def build_bias(
    rules: Sequence[Rule],
    layout: TokenLayout,
    branches: Sequence[str] | None,
    batch_size: int,
    num_heads: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor | None, list[Rule]]:
    """Sum the logit biases of ``rules`` per (row, head, query group, key group).

    Returns the bias (None when no rule selects any pair) and the rules that contributed.
    """
    g = layout.num_groups
    bias = torch.zeros(batch_size, num_heads, g, g, dtype=torch.float32)
    touched: list[Rule] = []
    per_head = False
    for rule in rules:
        try:
            rows, heads, q_groups, k_groups = _selection(rule, layout, branches, batch_size, num_heads)
        except ConfigError as exc:
            raise type(exc)(f"rule {rule!r}: {exc}") from exc
        if not rows or not q_groups or not k_groups:
            continue
        per_head = per_head or rule.heads is not None
        value = rule.transform.logit_bias
        index = torch.meshgrid(
            torch.tensor(rows), torch.tensor(heads), torch.tensor(q_groups), torch.tensor(k_groups), indexing="ij"
        )
        if value == -math.inf:
            bias[index] = -math.inf
        else:
            bias[index] += value
        touched.append(rule)
    if not touched:
        return None, touched
    if not per_head:
        bias = bias[:, 0]
        if bool((bias == bias[:1]).all()):
            bias = bias[0]
    return bias.to(device), touched


def _selection(
    rule: Rule, layout: TokenLayout, branches: Sequence[str] | None, batch_size: int, num_heads: int
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Rows, heads, query groups and key groups a rule selects in one call."""
    rows = rule_rows(rule, branches, batch_size)
    heads = list(range(num_heads))
    if rule.heads is not None:
        bad = [h for h in rule.heads if h >= num_heads]
        if bad:
            raise ConfigError(f"Rule.heads {bad} out of range for a layer with {num_heads} heads (allowed 0..{num_heads - 1})")
        heads = list(rule.heads)
    return rows, heads, sorted(rule.query.groups(layout)), sorted(rule.key.groups(layout))
