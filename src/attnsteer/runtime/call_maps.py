"""Spatial maps of one attention call, computed with the attention itself, never an N x N matrix.

- **Per-query mass onto key sets** (``onto``): the grouped kernel's per-query weights
  (``grouped_attention(per_query=True)``) on a partition of the keys into cells that refines the
  plan's cells and every key set asked for; a key set's map is the sum of its cells' weights. The
  kernel runs the queries in chunks (``grouped_attention_chunks``) and each chunk's weights are
  reduced to the maps at once, so the memory beyond the output is a chunk's buffers plus O(N x K).
- **Mean attention of a query set on every key** (``region``): with ``lse_i`` the log-sum-exp of
  query i's logits (from the same kernel), ``sum_i exp(s_ij + b_ij - lse_i)`` is, for every key j,
  the log-sum-exp of a *transposed* attention call (keys as queries, the selected queries as keys,
  ``b_ij - lse_i`` as an additive mask): one fused call per key cell, cost the selected queries'
  share of one attention call, memory O(N).

Both are exact: the same softmax as the model's, biases of the steering rules included.

``record_maps`` and ``record_cross_maps`` compute them for the recordings that want a call and hand each its
columns (``recording.add``); the recordings themselves are :class:`attnsteer.inspection.map_recording.MapRecording`.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ..errors import SteeringError
from ..kernels.backends import attention_with_lse
from ..kernels.grouped import additive_mask, grouped_attention_chunks, query_chunk_rows
from ..language.layout import TokenLayout
from .call_state import ForwardState, LayerInfo
from .plan import CallPlan


@attrs.frozen(eq=False)
class CallMaps:
    """What one call yields: per-query mass on each key set [B, N, K] and each query set's mean
    attention on every key [B, R, N], both averaged over heads, float32."""

    onto: torch.Tensor
    regions: torch.Tensor


def run_with_maps(
    plan: CallPlan,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    scale: float | None,
    attn_mask: torch.Tensor | None,
    key_sets: list[torch.Tensor],
    query_sets: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, CallMaps]:
    """(output [B, H, N, Dv], mass [B, H, G, G] over layout groups, maps) of one self-attention call
    under ``plan``; ``key_sets`` and ``query_sets`` are boolean [N] masks (CPU)."""
    device = q.device
    scale = plan.logit_scale(q.shape[-1], scale)
    cells = _Cells.of(plan, layout, key_sets, device)
    groups = layout.group_ids()
    to_group = torch.nn.functional.one_hot(groups[cells.first], layout.num_groups).float().to(device)  # [C, G]
    b, h, n, _ = q.shape
    out = torch.empty(b, h, n, v.shape[-1], dtype=q.dtype, device=device)
    lse = torch.empty(b, h, n, dtype=torch.float32, device=device)
    group_sum = torch.zeros(b, h, layout.num_groups, layout.num_groups, dtype=torch.float32, device=device)
    onto = torch.zeros(b, n, len(key_sets), dtype=torch.float32, device=device)
    q_groups = groups.to(device)
    for rows, qm in grouped_attention_chunks(q, k, v, cells.ids, cells.ids, out, bias=cells.bias, scale=scale,
                                             attn_mask=attn_mask, num_q_groups=cells.count, num_k_groups=cells.count):
        lse[:, :, rows] = qm.lse
        group_sum.index_add_(2, q_groups[rows], qm.weights @ to_group)
        if key_sets:
            onto[:, rows] = (qm.weights @ cells.to_keys).mean(1)
    counts = torch.bincount(groups, minlength=layout.num_groups).clamp_min(1).float().to(device)
    mass = group_sum / counts[:, None]
    regions = [
        _mean_attention(q, k, lse, cells.ids, cells.bias, scale, attn_mask, query_set) for query_set in query_sets
    ]
    region_maps = torch.stack(regions, 1) if regions else torch.zeros(b, 0, n, device=device)
    return out, mass, CallMaps(onto=onto, regions=region_maps)


def cross_maps(
    plan: CallPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, scale: float | None,
    attn_mask: torch.Tensor | None, key_sets: list[torch.Tensor],
) -> torch.Tensor:
    """[B, Nv, K]: per video query of a cross-attention call, its mass (mean over heads) on each key set.

    ``layout`` is the call's joint ``[text, video]`` layout (:func:`attnsteer.runtime.execute.cross_layout`):
    the keys are its text part, the queries its video part; ``key_sets`` are [N] masks over it.
    The call's output is left to the model (this only reads its q and k)."""
    scale = plan.logit_scale(q.shape[-1], scale)
    cells = _Cells.of(plan, layout, key_sets, q.device)
    text = layout.video_start
    b, _, n, _ = q.shape
    onto = torch.zeros(b, n, len(key_sets), dtype=torch.float32, device=q.device)
    for rows, qm in grouped_attention_chunks(q, k, v, cells.ids[text:], cells.ids[:text], None, bias=cells.bias,
                                             scale=scale, attn_mask=attn_mask, num_q_groups=cells.count,
                                             num_k_groups=cells.count):
        onto[:, rows] = (qm.weights @ cells.to_keys).mean(1)
    return onto


@attrs.frozen(eq=False)
class _Cells:
    """The key partition of a maps call: the plan's cells (or the layout groups) refined by every key
    set, on the call's device, with the plan's bias on them."""

    ids: torch.Tensor  # [N] cell of every token
    first: torch.Tensor  # [C] first token of every cell (CPU)
    bias: torch.Tensor | None  # the plan's bias over the refined cells
    to_keys: torch.Tensor | None  # [C, K] float: which cells make up each key set

    @property
    def count(self) -> int:
        return int(self.first.numel())

    @classmethod
    def of(cls, plan: CallPlan, layout: TokenLayout, key_sets: list[torch.Tensor], device: torch.device) -> _Cells:
        if plan.path == "scored":
            rules = ", ".join(repr(s.rule) for s in plan.scored)
            raise SteeringError(
                f"spatial maps need rules that are constant per pair of token sets (the grouped kernel); {rules} "
                "change logits elementwise (the score path), which gives no per-query log-sum-exp: record the maps "
                "without those rules"
            )
        base = plan.cells if plan.path == "grouped" else layout.group_ids()
        ids, parent, first = _refine(base, key_sets)
        bias = None if plan.path != "grouped" else plan.bias[..., parent, :][..., parent].to(device)
        to_keys = torch.stack([m[first] for m in key_sets], -1).float().to(device) if key_sets else None
        return cls(ids.to(device), first, bias, to_keys)


def _refine(base: torch.Tensor, masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cells that refine ``base`` by every mask: (cell of each token [N], base cell of each cell [C],
    first token of each cell [C])."""
    code = base
    for m in masks:
        code = torch.unique(code * 2 + m.long(), return_inverse=True)[1]
    n = code.numel()
    first = torch.full((int(code.max()) + 1,), n, dtype=torch.long).scatter_reduce(0, code, torch.arange(n), reduce="amin")
    return code, base[first], first


def _span(index: torch.Tensor) -> torch.Tensor | slice:
    """``index`` as a slice where it is contiguous (the kernels then read without a copy)."""
    first, last = int(index[0]), int(index[-1])
    return slice(first, last + 1) if last - first + 1 == index.numel() else index


def _mean_attention(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, cells: torch.Tensor, bias: torch.Tensor | None,
    scale: float, attn_mask: torch.Tensor | None, query_set: torch.Tensor,
) -> torch.Tensor:
    """[B, N]: mean over the queries of ``query_set`` (and over heads) of their attention weight on every key.

    For each key cell c, ``log sum_i exp(s_ij + bias[c_i, c] + mask_ij - lse_i)`` over the selected
    queries i is the log-sum-exp of attention with the keys of c as queries and the selected
    queries as keys, ``bias[c_i, c] - lse_i`` (+ the transposed mask) as its additive mask.
    """
    b, h, n, _ = q.shape
    device = q.device
    selected = torch.nonzero(query_set).flatten()
    if selected.numel() == 0:
        raise SteeringError("a region map's query set selects no token of this call")
    rows = _span(selected.to(device))
    q_sel = q[:, :, rows].float()
    neg_lse = -lse[:, :, rows]  # [B, H, S]
    mask = additive_mask(attn_mask, torch.float32, (b, h, n, n))
    total = torch.zeros(b, h, n, dtype=torch.float32, device=device)
    sel_cells = cells[rows]
    for cell in torch.unique(cells).tolist():
        members = torch.nonzero(cells == cell).flatten()
        key_bias = neg_lse if bias is None else neg_lse + _bias_rows(bias, sel_cells, cell)
        step = query_chunk_rows(members.numel(), b * h)  # the keys are this call's queries: chunk them alike
        for start in range(0, members.numel(), step):
            keys = _span(members[start:start + step])
            transposed = key_bias[:, :, None, :]  # [B, H, 1, S]: the same for every key of the cell
            per_key = None
            if mask is not None:
                if mask.shape[-2] == 1:  # a key mask: constant over queries, added after the call
                    per_key = mask[..., 0, keys]  # [B|1, H|1, Nc]
                else:
                    transposed = transposed + mask[..., rows, :][..., keys].transpose(-1, -2)
            _, lse_t = attention_with_lse(k[:, :, keys].float(), q_sel, q_sel, scale, transposed)
            if per_key is not None:
                lse_t = lse_t + per_key
            total[:, :, keys] = torch.exp(lse_t)
    return total.mean(1) / selected.numel()


def _bias_rows(bias: torch.Tensor, sel_cells: torch.Tensor, key_cell: int) -> torch.Tensor:
    """[B|1, H|1, S]: the bias from each selected query's cell to ``key_cell``."""
    column = bias[..., key_cell]  # [..., C]
    if column.dim() == 1:
        column = column[None, None]
    elif column.dim() == 2:
        column = column[:, None]
    return column[..., sel_cells]


def record_maps(
    recordings: list[Any], plan: CallPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    state: ForwardState, layer: LayerInfo, scale: float | None, attn_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Run one self-attention call with the maps of every recording that wants this call: (output,
    layout-group mass [B, H, G, G]); None when no recording wants it (the caller runs the plan)."""
    wanted = [(r, bins) for r in recordings if (bins := r.bins(state, layer)) is not None]
    if not wanted:
        return None
    sets = [r.sets(state.layout) for r, _ in wanted]
    keys = [m for key_sets, _ in sets for m in key_sets]
    queries = [m for _, query_sets in sets for m in query_sets]
    out, mass, maps = run_with_maps(plan, q, k, v, state.layout, scale, attn_mask, keys, queries)
    _deliver(wanted, sets, maps, state, layer, "self")
    return out, mass


def record_cross_maps(
    recordings: list[Any], plan: CallPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    state: ForwardState, layer: LayerInfo, scale: float | None, attn_mask: torch.Tensor | None, layout: TokenLayout,
) -> None:
    """Read the cross-attention maps (``at.maps.onto(..., attention="cross")``) of one text cross-attention
    call, whose joint layout is ``layout`` ([text, video]); the call's output is not touched."""
    wanted = [(r, bins) for r in recordings if (bins := r.bins(state, layer, "cross")) is not None]
    if not wanted:
        return
    sets = [r.sets(layout, "cross") for r, _ in wanted]
    per_query = cross_maps(plan, q, k, v, layout, scale, attn_mask, [m for key_sets, _ in sets for m in key_sets])
    onto = torch.zeros(per_query.shape[0], state.layout.seq_len, per_query.shape[-1], device=per_query.device)
    onto[:, state.layout.video_start : state.layout.video_end] = per_query
    _deliver(wanted, sets, CallMaps(onto=onto, regions=onto.new_zeros(onto.shape[0], 0, onto.shape[1])), state, layer,
             "cross")


def _deliver(wanted, sets, maps: CallMaps, state: ForwardState, layer: LayerInfo, attention: str) -> None:
    """Give each recording its columns of a call's maps."""
    at_key = at_query = 0
    for (recording, bins), (key_sets, query_sets) in zip(wanted, sets):
        part = CallMaps(onto=maps.onto[..., at_key : at_key + len(key_sets)],
                        regions=maps.regions[:, at_query : at_query + len(query_sets)])
        recording.add(state, layer, bins, part, attention)
        at_key, at_query = at_key + len(key_sets), at_query + len(query_sets)
