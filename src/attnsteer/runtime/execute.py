"""Run a :class:`~attnsteer.runtime.plan.CallPlan` on one attention call's q, k, v: pick the kernel of its
path, fold in the uniform logit scale, apply identity rules, and return the attention mass per
layout group when a recorder wants it.

Cross-attention calls (video queries, text keys) run on the joint layout ``[text, video]`` of
:func:`cross_layout`, so the same selectors, predicates and plans serve them: queries are the
video part of that layout, keys its text part."""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from ..errors import SteeringError, describe_rule
from ..kernels import grouped_attention, scored_attention
from ..kernels.backends import class_kernel
from ..kernels.blocked import blocked_attention
from ..kernels.prepared import PreparedGroups, prepared_attention
from ..language.layout import Segment, TokenLayout
from ..language.selectors import clear_mask_cache
from . import backend_calls, flash_routing
from .block_plan import block_path, block_score_fn, decompose
from .plan import CallPlan, Selection, build_plan


def run_plan(
    plan: CallPlan,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    scale: float | None,
    attn_mask: torch.Tensor | None,
    want_mass: bool,
    prepared: PreparedGroups | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(output [B, H, N, Dv], mass [B, H, G, G] over layout groups or None).

    Under autograd the grouped kernel (no backward) is replaced by the score path, which applies
    the same rules elementwise and is differentiable. ``prepared``: the grouped plan's cells and bias already
    checked on the device (:mod:`attnsteer.kernels.prepared`), for calls without mass."""
    scale = plan.logit_scale(q.shape[-1], scale)
    device = q.device
    mass = None
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    on_flex = None
    if plan.path == "scored" and not (grad or want_mass):  # flex takes the rules as its score_mod
        on_flex = backend_calls.flex_scored(plan.scored, plan.head_offset, q, k, v, scale, attn_mask)
    decomposition = None if grad or want_mass or on_flex is not None else _decomposition(plan, q, k, layout)
    if on_flex is not None:
        out = on_flex
    elif decomposition is not None:  # fused calls on the blocks where every rule is constant, the rest elementwise
        # a grouped plan's blocks run on the user's backend where one answers the call; a score function's keep
        # attnsteer's kernel (on it, the mixed blocks' own logits merge with the classes': Sage would shift those)
        with contextlib.nullcontext() if plan.path == "grouped" else class_kernel(None):
            out = blocked_attention(q, k, v, decomposition.blocks, _block_fn(plan, q, k, scale), scale, attn_mask)
    elif plan.path == "scored" or (grad and (plan.path == "grouped" or want_mass)):
        out, mass = scored_attention(
            q, k, v, _with_key_shift(plan, _score_fn(plan.scored, q.shape[0], q.shape[1], layout.seq_len, device,
                                                     plan.head_offset), q, k, scale), scale,
            attn_mask,
            groups=layout.group_ids(device), num_groups=layout.num_groups, return_mass=want_mass,
        )
    elif plan.path == "grouped" and prepared is not None and not want_mass:
        out = prepared_attention(q, k, v, prepared, scale, attn_mask)
    elif plan.path == "grouped":
        cells, bias = _on_device(plan, device)
        out, mass = grouped_attention(
            q, k, v, cells, cells, bias=bias, scale=scale, attn_mask=attn_mask, return_mass=want_mass,
            num_q_groups=plan.num_cells, num_k_groups=plan.num_cells,
        )
        if mass is not None:
            mass = plan.group_mass(mass, layout.num_groups)
    elif want_mass:
        groups = layout.group_ids(device)
        out, mass = grouped_attention(
            q, k, v, groups, groups, scale=scale, attn_mask=attn_mask, return_mass=True,
            num_q_groups=layout.num_groups, num_k_groups=layout.num_groups,
        )
    elif any(_covers_all_queries(s) for s in plan.identity):
        return v.clone(), None  # every query attends only to itself: no attention to compute
    else:  # identity rules alone: the user's backend computes the attention they keep, where a router answers
        out = flash_routing.routed_output() if plan.scale_factor == 1.0 and not grad else None
        if out is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    for s in plan.identity:
        rows = s.rows.to(device)[:, None, None, None] & s.heads.to(device)[None, :, None, None]
        out = torch.where(rows & s.query.to(device)[None, None, :, None], v.to(out.dtype), out)
    return out, mass


@functools.lru_cache(maxsize=64)
def _on_device(plan: CallPlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A grouped plan's cells and bias on the call's device, copied once per plan."""
    return plan.cells.to(device), plan.bias.to(device)


def clear_rule_caches() -> None:
    """Drop every cached plan, score function and token mask. They hold rules, and through a rule's ``score_mod``,
    ``query_bias`` or selector whatever those reference (a model, a tensor): cleared when a model's last session
    ends, so nothing a session was given outlives it."""
    for cached in (build_plan, _on_device, _score_fn, block_path, decompose):
        cached.cache_clear()
    clear_mask_cache()


def _decomposition(plan: CallPlan, q: torch.Tensor, k: torch.Tensor, layout: TokenLayout):
    """The block decomposition of a scored or grouped self-attention plan where it beats the plan's own path
    (:mod:`attnsteer.runtime.block_plan`), else None."""
    if plan.path not in ("scored", "grouped") or not q.shape[-2] == k.shape[-2] == layout.seq_len:
        return None
    return block_path(plan, layout, q.shape[0], q.shape[1], q.device)


def _block_fn(plan: CallPlan, q: torch.Tensor, k: torch.Tensor, scale: float):
    """The block path's score function for the mixed keys (the rules probed once, as the score path does)."""
    if plan.path == "scored":
        _score_fn(plan.scored, q.shape[0], q.shape[1], k.shape[-2], q.device, plan.head_offset)
    shift = None
    if any(s.rule.transform.centred_keys for s in plan.scored):
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        shift = (q.to(work) @ k.to(work).mean(-2, keepdim=True).transpose(-1, -2)) * scale
    return block_score_fn(plan, q.shape[0], q.shape[1], q.device, shift)


def _covers_all_queries(s: Selection) -> bool:
    return bool(s.rows.all() and s.heads.all() and s.query.all())


@functools.lru_cache(maxsize=64)
def _score_fn(selections: tuple[Selection, ...], batch: int, heads: int, num_keys: int, device: torch.device,
              head_offset: int = 0):
    """The score function of the scored path: each selection's transform, in rule order, on its pairs
    (cached per plan, so a compiled chunk step is reused across layers and steps). Transforms see
    global head indices (``head_offset + h`` on a Ulysses rank)."""
    b_idx = torch.arange(batch, device=device)[:, None, None, None]
    h_idx = torch.arange(head_offset, head_offset + heads, device=device)[None, :, None, None]
    k_index = torch.arange(num_keys, device=device)
    bound = [
        (s.bind(device), s.transform, s.rows.to(device)[:, None, None, None] & s.heads.to(device)[None, :, None, None])
        for s in selections
    ]
    for s, (_, transform, _) in zip(selections, bound):
        _probe(s, transform, b_idx, h_idx, device)

    def apply(scores: torch.Tensor, q_index: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        q4, k4 = q_index[None, None, :, None], k_index[None, None, None, :]
        for pair_mask, transform, rows_heads in bound:
            where = rows_heads & pair_mask(q_index, k_index)[None, None]
            if transform.centred_keys:  # the rule reads the centred-key logits s - shift; shift is added back after
                new = transform.score(scores - shift, b_idx, h_idx, q4, k4) + shift
            else:
                new = transform.score(scores, b_idx, h_idx, q4, k4)
            scores = torch.where(where, new, scores)
        return scores

    if not all(t.constant_bias is not None or t.per_query is not None for _, t, _ in bound):
        return apply
    values = [t.constant_bias if t.constant_bias is not None else t.per_query.to(device) for _, t, _ in bound]

    def apply_biases(scores: torch.Tensor, q_index: torch.Tensor) -> torch.Tensor:
        # Additive rules only (the grouped rules under autograd): sum the biases apart and subtract each row's
        # largest before adding them, so a huge bias does not round away the logits' own digits (the grouped
        # kernel's log-sum-exp merge keeps them too); a constant per row leaves the softmax unchanged.
        total = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
        for (pair_mask, _, rows_heads), value in zip(bound, values):
            where = rows_heads & pair_mask(q_index, k_index)[None, None]
            add = value.to(scores.dtype)[q_index][:, None] if isinstance(value, torch.Tensor) else float(value)
            total = total + torch.where(where, add, 0.0)
        top = total.amax(-1, keepdim=True)
        return scores + (total - torch.where(torch.isfinite(top), top, 0.0))

    return apply_biases


def _probe(s: Selection, transform, b_idx: torch.Tensor, h_idx: torch.Tensor, device: torch.device) -> None:
    """Run an elementwise transform once on small probe logits of its own pairs (once per cached score function,
    nothing per call): NaN or +inf results, or an edit of the logits in place, would silently spoil or cancel
    the rule, so they raise naming it."""
    if transform.constant_bias is not None or transform.identity:
        return
    q_idx, k_idx = (m.nonzero()[:4, 0].to(device) for m in (s.query, s.key))
    shape = (b_idx.shape[0], h_idx.shape[1], q_idx.numel(), k_idx.numel())
    scores = torch.linspace(-8.0, 8.0, int(torch.Size(shape).numel()), device=device).reshape(shape)
    given = scores.clone()
    out = transform.score(scores, b_idx, h_idx, q_idx[None, None, :, None], k_idx[None, None, None, :])
    where = describe_rule(s.rule, None)
    if not torch.equal(scores, given):
        raise SteeringError(f"{where}: {transform!r} edits the logits it is given in place; return a new tensor "
                            "(s + x, not s.add_(x))")
    if bool(torch.isnan(out).any() | (out == float("inf")).any()):
        raise SteeringError(f"{where}: {transform!r} returns NaN or +inf for finite logits (probe logits in "
                            "[-8, 8]), which would make the attention output NaN")


def _with_key_shift(plan: CallPlan, fn, q: torch.Tensor, k: torch.Tensor, scale: float, start: int = 0):
    """``fn`` given, per query row, the part of its logits that the mean key contributes
    (``scale * q . mean(k)``, [B, H, rows, 1]) when a rule reads centred-key logits; else ``fn`` itself."""
    if not any(s.rule.transform.centred_keys for s in plan.scored):
        return fn
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    shift = (q.to(work) @ k.to(work).mean(-2, keepdim=True).transpose(-1, -2)) * scale  # [B, H, Nq, 1]
    return lambda s, q_index: fn(s, q_index, shift[:, :, q_index - start])


def cross_layout(video: TokenLayout, text_length: int) -> TokenLayout:
    """The joint layout ``[text, video]`` that a cross-attention call's rules resolve against."""
    if video.segments or video.video_start:
        raise SteeringError(f"cross-attention rules need a video-only self-attention layout, got {video.describe()}")
    return TokenLayout(num_frames=video.num_frames, tokens_per_frame=video.tokens_per_frame, video_start=text_length,
                       segments=[Segment("text", 0, text_length)], reference_frames=video.reference_frames,
                       grid=video.grid)


def run_cross_plan(
    plan: CallPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, scale: float | None,
    attn_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The output of a cross-attention call (queries: the video of ``layout``, keys: its text) under ``plan``."""
    text = layout.video_start
    return run_span_plan(plan, q, k, v, (text, layout.seq_len), text, scale, attn_mask)


def run_span_plan(
    plan: CallPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, queries: tuple[int, int], num_keys: int,
    scale: float | None, attn_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The output under ``plan`` of a call whose queries are the tokens ``[start, stop)`` of the plan's joint layout
    and whose keys are its first ``num_keys`` tokens (cross-attention; the streams of :mod:`attnsteer.contract.streams`)."""
    start, stop = queries
    scale = plan.logit_scale(q.shape[-1], scale)
    if plan.path == "grouped":
        cells, bias = _on_device(plan, q.device)
        out = grouped_attention(q, k, v, cells[start:stop], cells[:num_keys], bias=bias, scale=scale,
                                attn_mask=attn_mask, num_q_groups=plan.num_cells, num_k_groups=plan.num_cells)[0]
    elif plan.path == "scored":
        fn = _with_key_shift(plan, _score_fn(plan.scored, q.shape[0], q.shape[1], num_keys, q.device, plan.head_offset),
                             q, k, scale, start)
        out = scored_attention(q, k, v, lambda s, q_index: fn(s, q_index + start), scale, attn_mask)[0]
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    for s in plan.identity:  # self kinds only (Rule refuses identity elsewhere): each query's own value
        rows = s.rows.to(q.device)[:, None, None, None] & s.heads.to(q.device)[None, :, None, None]
        own = v[:, :, start:stop].to(out.dtype)
        out = torch.where(rows & s.query[start:stop].to(q.device)[None, None, :, None], own, out)
    return out
