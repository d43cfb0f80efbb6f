"""The block decomposition of a plan: which blocks of query rows x keys the fused kernel can run, and which
keys of a block need the elementwise score function.

Most pair predicates are piecewise constant on blocks (frame windows, boxes, same-region, token distance
beyond a radius): over a block of query rows, a key is then either selected by a rule for every row (*in*),
for none (*out*), or for some (*mixed*). Where every rule is in or out and each rule that is in adds a constant
(``bias``, ``block``, ``query_bias``), the block's logits are the plain logits plus a constant per key class,
which :func:`attnsteer.kernels.blocked.blocked_attention` runs fused; keys blocked for every row cost nothing.
Only mixed keys, and keys a score function (``scale_if_positive``, ``score_mod``, ...) selects, run
elementwise. The classification (:mod:`attnsteer.language.blocks`) is exact or conservative for any predicate
(a key in doubt runs elementwise); it is done once per cached plan, in blocks, O(N x block) memory.

Query blocks follow the layout's groups (frames, text spans), cut every :data:`BLOCK_ROWS` rows, so that
frame-level predicates give no mixed keys at all. In a scored plan, the rows of a block that no rule chooses as
queries (the rest of a frame around a box) leave it: they gather into one block of plain attention over every
key, and the rows the rules read form a block of their own (gathered rows).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs
import torch

from ..kernels.blocked import KeyClass, QueryBlock
from ..language.blocks import block_states
from ..language.layout import TokenLayout
from .plan import CallPlan, Selection

BLOCK_ROWS = 256  # query rows per block at most (the CPU flash kernel's own query block)
MAX_MIXED_SHARE = 0.25  # a scored plan takes the block path when at most this share of the logits is elementwise
MIN_SKIPPED_SHARE = 0.5  # a grouped plan takes it when its blocked blocks hold at least this share of the logits ...
MAX_GROUPED_MIXED_SHARE = 0.05  # ... and at most this share is elementwise (rows of a block in different cells)
MAX_RUNS = 4  # a key class of up to this many contiguous runs runs one fused call per run (no gather copy)


@attrs.frozen(eq=False)
class Decomposition:
    """A plan's query blocks, and the shares of the ``N x N`` logits that run elementwise and that are skipped."""

    blocks: tuple[QueryBlock, ...]
    mixed_share: float
    skipped_share: float

    def worth_it(self, path: str) -> bool:
        """Whether the block path beats the plan's own path: few elementwise logits for a scored plan, many
        skipped (blocked) logits for a grouped plan."""
        if path == "scored":
            return self.mixed_share <= MAX_MIXED_SHARE
        return (path == "grouped" and self.mixed_share <= MAX_GROUPED_MIXED_SHARE
                and self.skipped_share >= MIN_SKIPPED_SHARE)


@functools.lru_cache(maxsize=64)
def block_path(plan: CallPlan, layout: TokenLayout, batch: int, heads: int, device: torch.device
               ) -> Decomposition | None:
    """The decomposition of a scored or grouped self-attention plan where it beats the plan's own path, else None
    (cached: one lookup per call). A grouped plan is decomposed only when its bias blocks enough cell pairs."""
    if plan.path == "grouped" and _blocked_cell_share(plan) < MIN_SKIPPED_SHARE:
        return None
    if plan.path not in ("scored", "grouped"):
        return None
    decomposition = decompose(plan, layout, batch, heads, device)
    return decomposition if decomposition.worth_it(plan.path) else None


def _blocked_cell_share(plan: CallPlan) -> float:
    """The share of the N x N logits whose cell pair the grouped plan's bias blocks in every batch row and head."""
    blocked = torch.isneginf(plan.bias)
    while blocked.dim() > 2:
        blocked = blocked.all(0)
    sizes = plan.cell_sizes.double()
    total = float(sizes.sum()) ** 2
    return float(sizes @ blocked.double() @ sizes) / max(1.0, total)


@functools.lru_cache(maxsize=32)
def decompose(plan: CallPlan, layout: TokenLayout, batch: int, heads: int, device: torch.device) -> Decomposition:
    """The block decomposition of ``plan``'s logit rules for a self-attention call of ``layout`` (cached per plan)."""
    n = layout.seq_len
    keys = torch.arange(n)
    selections = plan.scored
    additive = [_additive_value(s) is not None for s in selections]
    rows_heads = [(s.rows[:, None] & s.heads[None, :])[:, :, None] for s in selections]  # [B, H, 1]
    blocks, mixed_logits, skipped_logits = [], 0, 0
    gathers: dict[bytes, torch.Tensor] = {}  # one tensor per distinct gathered key class: the kernel copies it once
    untouched = []  # rows of a scored plan that no selection chooses as queries: plain attention over every key
    for start, stop in query_blocks(layout):
        q_index = torch.arange(start, stop)
        if plan.path == "scored":  # split off the rows no rule reads (a box's rows keep the rest of their frame plain)
            chosen = torch.stack([s.query[q_index] for s in selections]).any(0)
            if not bool(chosen.all()):
                untouched.append(q_index[~chosen])
                if not bool(chosen.any()):
                    continue
                q_index = q_index[chosen]
        rows = slice(start, stop) if q_index.numel() == stop - start else q_index
        inside, elementwise = [], torch.zeros(n, dtype=torch.bool)
        for s, add in zip(selections, additive):
            all_in, any_in = selection_states(s, q_index, keys)
            elementwise |= (any_in & ~all_in) if add else any_in
            inside.append(all_in)
        classes, constant = [], ~elementwise
        if bool(constant.any()):
            positions = constant.nonzero()[:, 0]
            codes, which = _patterns(torch.stack(inside)[:, positions])
            for c in range(codes.shape[1]):
                class_keys = positions[which == c]
                bias = _class_bias(selections, codes[:, c], rows_heads, q_index)
                if bias is not None and bool(torch.isneginf(bias).all()):
                    skipped_logits += class_keys.numel() * q_index.numel()
                    continue
                bias = None if bias is None else bias.to(device)
                classes.extend(KeyClass(run if isinstance(run, slice) else
                                        gathers.setdefault(run.numpy().tobytes(), run.to(device)), bias)
                               for run in _key_runs(class_keys))
        mixed = None
        if bool(elementwise.any()):
            mixed = elementwise.nonzero()[:, 0]
            mixed_logits += mixed.numel() * q_index.numel()
            mixed = mixed.to(device)
        blocks.append(QueryBlock(rows, tuple(classes), mixed))
    blocks = _merge_alike(blocks)
    if untouched:
        blocks.append(QueryBlock(torch.cat(untouched), (KeyClass(slice(0, n), None),), None))
    blocks = [block if isinstance(block.rows, slice) else block._replace(rows=_on(_as_slice(block.rows), device))
              for block in blocks]
    total = max(1, n * n)
    return Decomposition(tuple(blocks), mixed_logits / total, skipped_logits / total)


def _merge_alike(blocks: list[QueryBlock]) -> list[QueryBlock]:
    """Blocks with the same key classes (no per-row bias) and the same mixed keys, merged into blocks of gathered
    rows of up to ``BLOCK_ROWS`` (a box's rows in every frame: one fused call instead of one per frame)."""
    merged: list[QueryBlock] = []
    open_by_signature: dict[tuple, int] = {}
    for block in blocks:
        if any(cls.bias is not None for cls in block.classes):
            merged.append(block)
            continue
        signature = (tuple((c.keys.start, c.keys.stop) if isinstance(c.keys, slice) else id(c.keys)
                           for c in block.classes),
                     None if block.mixed is None else block.mixed.cpu().numpy().tobytes())
        rows = _positions(block.rows)
        at = open_by_signature.get(signature)
        if at is not None and merged[at].rows.numel() + rows.numel() <= BLOCK_ROWS:
            merged[at] = merged[at]._replace(rows=torch.cat([merged[at].rows, rows]))
            continue
        open_by_signature[signature] = len(merged)
        merged.append(block._replace(rows=rows))
    return merged


def _positions(rows: slice | torch.Tensor) -> torch.Tensor:
    return torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows


def _on(rows: slice | torch.Tensor, device: torch.device) -> slice | torch.Tensor:
    return rows if isinstance(rows, slice) else rows.to(device)


def _as_slice(rows: torch.Tensor) -> slice | torch.Tensor:
    """Sorted row positions as a slice where they are one run (read without a copy)."""
    first, last = int(rows[0]), int(rows[-1])
    return slice(first, last + 1) if last - first + 1 == rows.numel() else rows


def selection_states(s: Selection, rows: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(all_in, any_in) [len(keys)]: the keys a selection (query x key masks x pair predicate) selects for every /
    some row of ``rows``; exact or conservative (:func:`attnsteer.language.blocks.block_states`)."""
    chosen = s.query[rows]
    key = s.key[keys]
    if not bool(chosen.any()):
        return torch.zeros_like(key), torch.zeros_like(key)
    some = not bool(chosen.all())  # some rows unselected: no key is in for every row
    rows = rows[chosen] if some else rows
    if s.rule.pairs is None:
        all_in, any_in = key, key
    else:
        all_in, any_in = block_states(s.rule.pairs, s.ctx, rows, keys)
        all_in, any_in = all_in & key, any_in & key
    return (torch.zeros_like(key) if some else all_in), any_in


def query_blocks(layout: TokenLayout) -> list[tuple[int, int]]:
    """[start, stop) of each query block: the runs of one layout group, cut every ``BLOCK_ROWS`` rows."""
    groups = layout.group_ids()
    n = groups.numel()
    cuts = [0] + (torch.nonzero(groups[1:] != groups[:-1])[:, 0] + 1).tolist() + [n]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        out.extend((s, min(s + BLOCK_ROWS, b)) for s in range(a, b, BLOCK_ROWS))
    return out


def _patterns(inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct columns [S, C] of the bool ``inside`` [S, M], the column index of each of the M keys)."""
    if inside.shape[0] > 62:  # too many rules for one int64 code per key
        return torch.unique(inside, dim=1, return_inverse=True)
    weights = 2 ** torch.arange(inside.shape[0], dtype=torch.long)
    values, which = torch.unique((inside.long() * weights[:, None]).sum(0), return_inverse=True)
    return (values[None, :] & weights[:, None]) != 0, which


def _additive_value(s: Selection) -> float | torch.Tensor | None:
    """The constant or per-query values an additive selection adds; None for a score function."""
    t = s.transform
    if t.kind == "constant":
        return t.constant_bias
    return t.per_query if t.kind == "per_query" else None


def _class_bias(selections, inside: torch.Tensor, rows_heads, q_index: torch.Tensor) -> torch.Tensor | None:
    """float64 [B|1, H|1, rows|1] (cast to the call's work dtype by the kernel): the sum of the values of the additive selections that are in for a key class."""
    bias = None
    for s, is_in, where in zip(selections, inside.tolist(), rows_heads):
        if not is_in:
            continue
        value = _additive_value(s)
        if isinstance(value, torch.Tensor):
            value = value[q_index].double()[None, None, :]
        term = torch.where(where, torch.as_tensor(value, dtype=torch.float64), 0.0)
        bias = term if bias is None else bias + term
    return None if bias is None or not bool(bias.any()) else bias


def _key_runs(index: torch.Tensor) -> list[slice | torch.Tensor]:
    """The sorted positions ``index`` as slices of contiguous runs (fused calls then read k and v without a copy),
    or as one index tensor where they make more than ``MAX_RUNS`` runs."""
    breaks = (torch.nonzero(index[1:] != index[:-1] + 1)[:, 0] + 1).tolist()
    if len(breaks) >= MAX_RUNS:
        return [index]
    bounds = [0, *breaks, index.numel()]
    return [slice(int(index[a]), int(index[b - 1]) + 1) for a, b in zip(bounds[:-1], bounds[1:])]


def block_score_fn(plan: CallPlan, batch: int, heads: int, device: torch.device,
                   shift: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(scores [B, H, r, m], q_index [r], k_index [m])``: every logit rule of the plan, in rule order, on its own
    pairs among these rows and keys (the mixed keys of a block). ``shift`` [B, H, Nq, 1]: each row's logit part
    from the mean key, for rules that read centred-key logits."""
    b_idx = torch.arange(batch, device=device)[:, None, None, None]
    h_idx = torch.arange(plan.head_offset, plan.head_offset + heads, device=device)[None, :, None, None]
    bound = [(s.bind(device), s.transform, (s.rows.to(device)[:, None] & s.heads.to(device)[None, :])[:, :, None, None])
             for s in plan.scored]

    def fn(scores: torch.Tensor, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
        q4, k4 = q_index[None, None, :, None], k_index[None, None, None, :]
        for pair_mask, transform, rows_heads in bound:
            where = rows_heads & pair_mask(q_index, k_index)[None, None]
            if transform.centred_keys:
                row_shift = shift[:, :, q_index]
                new = transform.score(scores - row_shift, b_idx, h_idx, q4, k4) + row_shift
            else:
                new = transform.score(scores, b_idx, h_idx, q4, k4)
            scores = torch.where(where, new, scores)
        return scores

    return fn


__all__ = ["BLOCK_ROWS", "Decomposition", "block_path", "block_score_fn", "decompose", "query_blocks"]
