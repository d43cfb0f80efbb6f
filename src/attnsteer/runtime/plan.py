"""Compile the rules that are on for one attention call into what the kernels run.

Three paths, chosen per call, all exact:

- **plain**: no rule selects anything (and nothing is recorded): the model's own SDPA call.
- **grouped**: every active rule adds a constant per pair of *cells*, the partition of the tokens
  into layout groups (frames, segments) refined by the regions the rules name. The bias is a
  ``[Gq, Gk]`` table (``[B, ...]`` when branches differ, ``[B, H, ...]`` when a rule filters heads)
  and the fused log-sum-exp kernel applies it. DyMoS, block masks, region biases and frame windows
  stay here.
- **scored**: some rule is elementwise (a score function, a position predicate), or the cells are
  too many for a ``[C, C]`` table (per-token ``query_bias`` values: :func:`max_cell_pairs`): the
  chunked exact kernel applies every rule in order, ``O(N x chunk)`` memory.

Identity rules (output = V) are applied after the kernel; a uniform logit scale over every pair
is folded into SDPA's ``scale``, keeping the rule order: the additive rules before it are scaled
with it (``(s + b) * f == s * f + b * f``); after any other rule it stays an in-order score rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import attrs
import torch

from ..errors import ConfigError, SteeringError
from ..language.layout import TokenLayout
from ..language.rules import Rule
from ..language.selectors import SelectionContext
from ..language.transforms import MAX_BIAS, Transform


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
    # the factor of the uniform logit scales given after this (additive) rule and folded into SDPA's scale
    factor: float = 1.0

    @property
    def transform(self) -> Transform:
        """The rule's transform bound to this call's layout (per-query values, call-length scales), times
        the later folded logit scales."""
        bound = self.rule.transform.bind(self.ctx.layout)
        return bound if self.factor == 1.0 else _ScaledBias(bound, self.factor)

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
    selections, applied, folded, scale_factor = [], [], [], 1.0
    for rule, ctx in rules:
        try:
            s = select(rule, ctx, branches, batch_size, num_heads, head_offset, total_heads)
        except ConfigError as exc:
            raise type(exc)(f"rule {rule!r}: {exc}") from exc
        if not (s.rows.any() and s.heads.any() and s.query.any() and s.key.any()):
            continue
        if rule.pairs is not None and not _selects_a_pair(s):
            continue  # its pair predicate selects nothing here: not applied (the session reports it if never)
        applied.append(rule)
        factor = rule.transform.call_scale(layout)
        if factor is not None and s.covers_everything and _can_fold(selections, factor):
            scale_factor *= factor
            selections = [attrs.evolve(e, factor=e.factor * factor) if _is_additive(e) else e for e in selections]
            folded.append(rule)
            continue
        selections.append(s)
    if not abs(scale_factor) <= MAX_BIAS:
        raise SteeringError(f"rules {folded!r} together scale every logit by {scale_factor:g}, which overflows "
                            f"float32 logits (NaN outputs); keep the product of their factors <= {MAX_BIAS:g}")
    identity = tuple(s for s in selections if s.rule.transform.kind == "identity" and not want_mass)
    logits = [s for s in selections if s not in identity]
    if not logits:
        return CallPlan("plain", tuple(applied), scale_factor, identity=identity, head_offset=head_offset)
    if all(_is_grouped(s) for s in logits):
        plan = _grouped_plan(logits, layout, tuple(applied), scale_factor, identity, batch_size, num_heads)
        if plan is not None:
            return attrs.evolve(plan, head_offset=head_offset)
    return CallPlan("scored", tuple(applied), scale_factor, scored=tuple(logits), identity=identity,
                    head_offset=head_offset)


def _is_additive(s: Selection) -> bool:
    """Whether a selection adds a constant or per-query value to its logits."""
    t = s.rule.transform.bind(s.ctx.layout)
    return t.constant_bias is not None or t.per_query is not None


def _can_fold(earlier: list[Selection], factor: float) -> bool:
    """Whether a uniform logit scale given after ``earlier`` can go into SDPA's scale in rule order: every
    earlier logit rule is additive (its value is scaled too), or is identity attention (unchanged by f > 0),
    and no -inf would be multiplied by f <= 0."""
    for s in earlier:
        if s.rule.transform.identity:
            if factor <= 0:
                return False
        elif not _is_additive(s):
            return False
        elif factor <= 0 and s.transform.constant_bias is not None and math.isinf(s.transform.constant_bias):
            return False
    return True


@attrs.frozen(eq=False)
class _ScaledBias(Transform):
    """An additive transform (constant or per-query) multiplied by the uniform logit scales given after it."""

    inner: Transform
    factor: float

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The inner transform's kernel path: scaling a constant or per-query value keeps it."""
        return self.inner.kind

    @property
    def constant_bias(self) -> float | None:  # type: ignore[override]
        c = self.inner.constant_bias
        return None if c is None else c * self.factor

    @property
    def per_query(self) -> torch.Tensor | None:  # type: ignore[override]
        p = self.inner.per_query
        return None if p is None else p * self.factor

    def score(self, s, b, h, q_idx, kv_idx):
        c = self.constant_bias
        return s + c if c is not None else s + self.per_query.to(s.device, s.dtype)[q_idx]


def _selects_a_pair(s: Selection) -> bool:
    """Whether a rule's pair predicate keeps at least one of its (query, key) pairs in this call; in query chunks,
    O(N x chunk) memory, once per cached plan."""
    queries, keys = s.query.nonzero()[:, 0], s.key.nonzero()[:, 0]
    mask = s.bind(torch.device("cpu"))
    step = max(1, (1 << 22) // max(1, keys.numel()))
    return any(bool(mask(queries[i:i + step], keys).any()) for i in range(0, queries.numel(), step))


def _is_grouped(s: Selection) -> bool:
    """Whether the grouped kernel serves a selection: its transform's kind adds a constant or per-query value
    (checked to carry it), and its pairs, if any, are unions of whole cells."""
    return _additive_kind(s) is not None and (s.rule.pairs is None or not s.rule.pairs.elementwise)


def _additive_kind(s: Selection) -> str | None:
    """"constant" or "per_query" for a transform of that kind (whose value must be there), else None."""
    t = s.transform
    if t.kind not in ("constant", "per_query"):
        return None
    value = t.constant_bias if t.kind == "constant" else t.per_query
    if value is None:
        raise SteeringError(f"rule {s.rule!r}: its transform {t!r} declares kind {t.kind!r} but its "
                            f"{'constant_bias' if t.kind == 'constant' else 'per_query'} is None")
    return t.kind


def _cell_bias(s: Selection, reps: torch.Tensor) -> torch.Tensor | float:
    """The logit a grouped selection adds, per query cell [C, 1] (per-query values) or constant."""
    t = s.transform
    return t.constant_bias if t.kind == "constant" else t.per_query[reps][:, None].float()


def max_cell_pairs(seq_len: int) -> int:
    """The most cell pairs a grouped plan's bias table may have for a call of ``seq_len`` tokens: O(N), so
    a rule that splits the tokens into many cells (per-token ``query_bias`` values) never asks for N x N."""
    return max(CELL_PAIRS_PER_TOKEN * seq_len, MIN_CELL_PAIRS)


CELL_PAIRS_PER_TOKEN = 16  # a [C, C] table per (row, head) no larger than 16 floats per token ...
MIN_CELL_PAIRS = 1 << 16  # ... or 256 x 256 cells, whichever is more


def _grouped_plan(
    selections: list[Selection], layout: TokenLayout, applied: tuple[Rule, ...], scale_factor: float,
    identity: tuple[Selection, ...], batch: int, heads: int,
) -> CallPlan | None:
    """The grouped plan of ``selections``, or None when their cells are too many for a bias table
    (see :func:`max_cell_pairs`): then the score path runs them."""
    cells, reps = _cells(selections, layout)
    c = reps.numel()
    if c * c > max_cell_pairs(layout.seq_len):
        return None  # per-token values made a cell of (almost) every token: the score path stays O(N x chunk)
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
        if s.transform.kind == "per_query":
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
