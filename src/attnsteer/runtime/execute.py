"""Run a :class:`~attnsteer.runtime.plan.CallPlan` on one attention call's q, k, v: pick the kernel of its
path, fold in the uniform logit scale, apply identity rules, and return the attention mass per
layout group when a recorder wants it.

Cross-attention calls (video queries, text keys) run on the joint layout ``[text, video]`` of
:func:`cross_layout`, so the same selectors, predicates and plans serve them: queries are the
video part of that layout, keys its text part."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..errors import SteeringError
from ..kernels import grouped_attention, scored_attention
from ..language.layout import Segment, TokenLayout
from .plan import CallPlan, Selection


def run_plan(
    plan: CallPlan,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    scale: float | None,
    attn_mask: torch.Tensor | None,
    want_mass: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(output [B, H, N, Dv], mass [B, H, G, G] over layout groups or None).

    Under autograd the grouped kernel (no backward) is replaced by the score path, which applies
    the same rules elementwise and is differentiable."""
    scale = plan.logit_scale(q.shape[-1], scale)
    device = q.device
    mass = None
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if plan.path == "scored" or (grad and (plan.path == "grouped" or want_mass)):
        out, mass = scored_attention(
            q, k, v, _with_key_shift(plan, _score_fn(plan.scored, q.shape[0], q.shape[1], layout.seq_len, device,
                                                     plan.head_offset), q, k, scale), scale,
            attn_mask,
            groups=layout.group_ids(device), num_groups=layout.num_groups, return_mass=want_mass,
        )
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
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    for s in plan.identity:
        rows = s.rows.to(device)[:, None, None, None] & s.heads.to(device)[None, :, None, None]
        out = torch.where(rows & s.query.to(device)[None, None, :, None], v.to(out.dtype), out)
    return out, mass


@functools.lru_cache(maxsize=64)
def _on_device(plan: CallPlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A grouped plan's cells and bias on the call's device, copied once per plan."""
    return plan.cells.to(device), plan.bias.to(device)


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

    return apply


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
