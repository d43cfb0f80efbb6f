"""Compile the rules that are on for one attention call into what the kernels run.

Three paths, chosen per call, all exact:

- **plain**: no rule selects anything (and nothing is recorded): the model's own SDPA call.
- **grouped**: every active rule adds a constant per pair of *cells*, the partition of the tokens
  into layout groups (frames, segments) refined by the regions the rules name. The bias is a
  ``[Gq, Gk]`` table (``[B, ...]`` when branches differ, ``[B, H, ...]`` when a rule filters heads)
  and the fused log-sum-exp kernel applies it. DyMoS, block masks, region biases and frame windows
  stay here.
- **scored**: some rule is elementwise (a score function, a per-query bias, a position predicate):
  the chunked exact kernel applies every rule in order, ``O(N x chunk)`` memory.

Identity rules (output = V) are applied after the kernel; a uniform logit scale over every pair
is folded into SDPA's ``scale``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import attrs
import torch

from ..errors import ConfigError
from ..language.layout import TokenLayout
from ..language.rules import Rule
from ..language.selectors import SelectionContext
from ..language.transforms import Transform


def rule_rows(rule: Rule, branches: Sequence[str] | None, batch_size: int) -> list[int]:
    """The batch rows a rule applies to; raises when its branch cannot be told for this call."""
    if rule.branch == "all":
        return list(range(batch_size))
    if branches is None:
        raise ConfigError(
            f"branch={rule.branch!r} needs the guidance branch of each batch row, which is unknown for this call "
            "(no cache_context from a pipeline); steer the pipeline, state it in a loop of your own with "
            "`with session.step(i, branch='cond'):`, give the adapter a branches hook (GenericAdapter(branches=...) or "
            "Adapter.branches), or use branch='all'"
        )
    return [row for row, b in enumerate(branches) if b == rule.branch]


def rule_heads(rule: Rule, num_heads: int, head_offset: int = 0, total_heads: int | None = None) -> list[int]:
    """The heads of the call (``num_heads`` of them, global heads ``head_offset + h``, as a Ulysses rank
    holds a slice of ``total_heads``) that a rule applies to; raises when its head filter exceeds the
    layer's heads."""
    total = num_heads if total_heads is None else total_heads
    if rule.heads is None:
        return list(range(num_heads))
    bad = [h for h in rule.heads if h >= total]
    if bad:
        raise ConfigError(f"Rule.heads {bad} out of range for a layer with {total} heads (allowed 0..{total - 1})")
    return [h - head_offset for h in rule.heads if head_offset <= h < head_offset + num_heads]


@attrs.frozen(eq=False)
class Selection:
    """One active rule resolved against one call: rows, heads, query and key masks (CPU)."""

    rule: Rule
    ctx: SelectionContext
    rows: torch.Tensor  # bool [B]
    heads: torch.Tensor  # bool [H]
    query: torch.Tensor  # bool [N]
    key: torch.Tensor  # bool [N]

    @property
    def transform(self) -> Transform:
        """The rule's transform bound to this call's layout (per-query values, call-length scales)."""
        return self.rule.transform.bind(self.ctx.layout)

    @property
    def covers_everything(self) -> bool:
        return bool(self.rows.all() and self.heads.all() and self.query.all() and self.key.all()) and self.rule.pairs is None

    def pair_mask(self, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
        """bool [len(q_index), len(k_index)]: selected query x selected key x the rule's pair predicate."""
        return self.bind(q_index.device)(q_index, k_index)

    def bind(self, device: torch.device):
        """``fn(q_index, k_index) -> pair_mask`` with this call's masks already on ``device``."""
        query, key = self.query.to(device), self.key.to(device)
        pairs = None if self.rule.pairs is None else self.rule.pairs.bind(self.ctx, device)

        def fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            sel = query[q][:, None] & key[k][None, :]
            return sel if pairs is None else sel & pairs(q, k)

        return fn


@attrs.frozen(eq=False)
class CallPlan:
    """What one attention call runs; see the module docstring for the paths."""

    path: str  # "plain" | "grouped" | "scored"
    applied: tuple[Rule, ...]
    scale_factor: float = 1.0
    # grouped path: cell of every token, the cell bias, and each cell's layout group and size
    cells: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    cell_groups: torch.Tensor | None = None
    cell_sizes: torch.Tensor | None = None
    # the logit selections in rule order: what the scored path applies (also kept on grouped plans,
    # whose differentiable form under autograd is the scored path)
    scored: tuple[Selection, ...] = ()
    # identity rules, applied after the kernel
    identity: tuple[Selection, ...] = ()
    # global index of the call's first head (a Ulysses rank's slice of the heads; score functions see global heads)
    head_offset: int = 0

    def logit_scale(self, head_dim: int, scale: float | None) -> float:
        """The scale the call's logits get: the call's own (SDPA's default ``head_dim ** -0.5`` when None)
        times the uniform factor that logit-scale rules fold in."""
        return (head_dim**-0.5 if scale is None else float(scale)) * self.scale_factor

    @property
    def num_cells(self) -> int:
        return 0 if self.cell_groups is None else int(self.cell_groups.numel())

    def group_mass(self, mass: torch.Tensor, num_groups: int) -> torch.Tensor:
        """Cell-level mass [B, H, C, C] -> layout-group mass [B, H, G, G]: keys summed, queries
        averaged weighted by their cells' token counts."""
        onehot = torch.nn.functional.one_hot(self.cell_groups.to(mass.device), num_groups).float()  # [C, G]
        weights = self.cell_sizes.to(mass.device).float()
        by_key = mass @ onehot  # [B, H, C, G]
        summed = (onehot * weights[:, None]).T @ by_key  # [B, H, G, G]
        return summed / (onehot.T @ weights).clamp_min(1)[:, None]


def select(rule: Rule, ctx: SelectionContext, branches: Sequence[str] | None, batch: int, heads: int,
           head_offset: int = 0, total_heads: int | None = None) -> Selection:
    """Resolve one rule against one call (raises with the field at fault when it cannot); the call's
    heads are global heads ``head_offset ...`` of ``total_heads`` (a Ulysses rank's slice)."""
    rows = torch.zeros(batch, dtype=torch.bool)
    rows[rule_rows(rule, branches, batch)] = True
    if ctx.rows is not None:
        if len(ctx.rows) != batch:
            raise ConfigError(f"the session's batch rows {ctx.rows} do not match the call's batch of {batch}")
        rows &= torch.tensor(ctx.rows, dtype=torch.bool)
    head_mask = torch.zeros(heads, dtype=torch.bool)
    head_mask[rule_heads(rule, heads, head_offset, total_heads)] = True
    return Selection(rule, ctx, rows, head_mask, ctx.limit_queries(rule.query.token_mask(ctx)), rule.key.token_mask(ctx))


@functools.lru_cache(maxsize=64)
def build_plan(
    rules: tuple[tuple[Rule, SelectionContext], ...],
    layout: TokenLayout,
    branches: tuple[str, ...] | None,
    batch_size: int,
    num_heads: int,
    *,
    want_mass: bool = False,
    head_offset: int = 0,
    total_heads: int | None = None,
) -> CallPlan:
    """Resolve the active ``(rule, context)`` pairs of one call into a :class:`CallPlan` (CPU tensors;
    cached, since the same rules meet the same layout in every layer and step). Under Ulysses context
    parallelism the call holds ``num_heads`` of ``total_heads`` heads, from global head ``head_offset``."""
    selections, applied, scale_factor = [], [], 1.0
    for rule, ctx in rules:
        try:
            s = select(rule, ctx, branches, batch_size, num_heads, head_offset, total_heads)
        except ConfigError as exc:
            raise type(exc)(f"rule {rule!r}: {exc}") from exc
        if not (s.rows.any() and s.heads.any() and s.query.any() and s.key.any()):
            continue
        applied.append(rule)
        factor = rule.transform.call_scale(layout)
        if factor is not None and s.covers_everything:
            scale_factor *= factor
            continue
        selections.append(s)
    identity = tuple(s for s in selections if s.rule.transform.identity and not want_mass)
    logits = [s for s in selections if s not in identity]
    if not logits:
        return CallPlan("plain", tuple(applied), scale_factor, identity=identity, head_offset=head_offset)
    if all(_is_grouped(s) for s in logits):
        plan = _grouped_plan(logits, layout, tuple(applied), scale_factor, identity, batch_size, num_heads)
        return attrs.evolve(plan, head_offset=head_offset)
    return CallPlan("scored", tuple(applied), scale_factor, scored=tuple(logits), identity=identity,
                    head_offset=head_offset)


def _is_grouped(s: Selection) -> bool:
    t = s.transform
    return (t.constant_bias is not None or t.per_query is not None) and (
        s.rule.pairs is None or not s.rule.pairs.elementwise
    )


def _cell_bias(s: Selection, reps: torch.Tensor) -> torch.Tensor | float:
    """The logit a grouped selection adds, per query cell [C, 1] (per-query values) or constant."""
    t = s.transform
    return t.constant_bias if t.constant_bias is not None else t.per_query[reps][:, None].float()


def _grouped_plan(
    selections: list[Selection], layout: TokenLayout, applied: tuple[Rule, ...], scale_factor: float,
    identity: tuple[Selection, ...], batch: int, heads: int,
) -> CallPlan:
    cells, reps = _cells(selections, layout)
    c = reps.numel()
    bias = torch.zeros(batch, heads, c, c, dtype=torch.float32)
    for s in selections:
        where = s.rows[:, None, None, None] & s.heads[None, :, None, None] & s.pair_mask(reps, reps)[None, None]
        bias = bias + torch.where(where, _cell_bias(s, reps), 0.0)
    if all(s.rule.heads is None for s in selections):
        bias = bias[:, 0]
        if bool((bias == bias[:1]).all()):
            bias = bias[0]
    groups = layout.group_ids()[reps]
    sizes = torch.bincount(cells, minlength=c)
    return CallPlan("grouped", applied, scale_factor, cells=cells, bias=bias, cell_groups=groups, cell_sizes=sizes,
                    scored=tuple(selections), identity=identity)


def _cells(selections: list[Selection], layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The partition of the tokens by layout group and by membership of every mask the rules read:
    (cell id per token [N], first token of each cell [C]). Cells are numbered in token order of
    their first token, so plain frame rules give cells == layout groups. Per-query bias values
    refine the cells too, so each cell has one value."""
    code = layout.group_ids()
    masks = {}
    for s in selections:
        if s.transform.per_query is not None:
            values = torch.unique(s.transform.per_query, return_inverse=True)[1]
            masks.setdefault(id(values), values)
        masks.setdefault(id(s.query), s.query)
        masks.setdefault(id(s.key), s.key)
        for region in (s.rule.pairs.selectors() if s.rule.pairs is not None else ()):
            m = region.token_mask(s.ctx)
            masks.setdefault(id(m), m)
    for m in masks.values():
        code = torch.unique(code * (int(m.max()) + 1) + m.long(), return_inverse=True)[1]
    n = code.numel()
    first = torch.full((int(code.max()) + 1,), n, dtype=torch.long).scatter_reduce(
        0, code, torch.arange(n), reduce="amin"
    )
    order = torch.argsort(first)
    renumber = torch.empty_like(order)
    renumber[order] = torch.arange(order.numel())
    return renumber[code], first[order]


__all__ = ["CallPlan", "Selection", "build_plan", "rule_heads", "rule_rows"]
