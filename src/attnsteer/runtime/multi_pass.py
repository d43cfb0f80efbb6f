"""Multi-pass rules at run time (:mod:`attnsteer.language.passes`): one self-attention call run once per pass and
the outputs combined.

A pass without frames runs the call's plan of the session's other logit rules plus the pass's own rules (the
exact kernels of :func:`~attnsteer.runtime.execute.run_plan`). A pass with ``frames=(start, stop)`` runs attention
among those frames' tokens only: q, k and v are sliced to them (frames are contiguous), so a window costs its own
share of the call, not a masked full call; its output is 0 elsewhere and its weights say what counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SteeringError
from ..language.layout import TokenLayout
from ..language.passes import Pass, PassCall
from .execute import run_plan
from .plan import build_plan, select


def passes_of(active: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """The multi-pass ``(client, rule)`` pairs among a call's active ones."""
    return [pair for pair in active if pair[1].transform.kind == "passes"]


def pass_call(layout: TokenLayout, batch: int, latent: tuple[int, int, int] | None) -> PassCall:
    """The :class:`PassCall` of a call: for a temporal call (one token per frame, space folded into the batch), the
    folded (rows, cols), found from the forward's latent (videos, height, width) as the grid of the latent's aspect
    whose size is the call's positions per video."""
    if layout.tokens_per_frame != 1 or layout.grid is not None or latent is None:
        return PassCall(layout, batch)
    videos, height, width = latent
    if batch % videos:
        return PassCall(layout, batch)
    positions = batch // videos
    factor = round(math.sqrt(height * width / positions)) if positions else 0
    if factor < 1 or height % factor or width % factor or (height // factor) * (width // factor) != positions:
        return PassCall(layout, batch)
    fold = (height // factor, width // factor)
    return PassCall(layout, batch, fold, fold == (height, width))


def run_multi_pass(
    multi: list[tuple[Any, Any]],
    base_pairs: tuple[tuple[Any, Any], ...],
    context_of: Callable[[Any, Any], Any],
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    layout: TokenLayout,
    branches: tuple[str, ...] | None,
    scale: float | None,
    attn_mask: torch.Tensor | None,
    latent: tuple[int, int, int] | None,
    base_output: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor | None, list[tuple[Any, Any]]]:
    """(the call's output, the multi-pass pairs applied), or (None, []) where the rule selects no row or query.

    ``base_pairs`` holds the call's other ``(rule, context)`` logit pairs; ``base_output()`` the call's output under
    them (the user's own kernel where they change no logit: a pass without rules or frames, and the rows and queries
    the multi-pass rule leaves)."""
    if len(multi) > 1:
        raise SteeringError(f"{len(multi)} multi-pass rules are on in one call ({multi[0][1]!r}, {multi[1][1]!r}); "
                            "their combinations do not compose: put the passes in one rule")
    client, rule = multi[0]
    s = select(rule, context_of(client, rule), branches, q.shape[0], q.shape[1])
    if not (s.rows.any() and s.query.any()):
        return None, []
    call = pass_call(layout, q.shape[0], latent)
    passes = rule.transform.passes_for(call)
    plain: list[torch.Tensor] = []  # the call under the other rules alone: a pass without rules or frames is it

    def base() -> torch.Tensor:
        if not plain:
            plain.append(base_output())
        return plain[0]

    outputs = [base() if p.frames is None and not p.rules else
               _run_pass(p, client, base_pairs, context_of, q, k, v, layout, branches, scale, attn_mask)
               for p in passes]
    combined = outputs[0] if len(outputs) == 1 else rule.transform.combine(outputs, passes, call)
    if not bool(s.rows.all() and s.query.all()):
        where = s.rows.to(q.device)[:, None, None, None] & s.query.to(q.device)[None, None, :, None]
        combined = torch.where(where, combined, base())
    return combined, [(client, rule)]


def _run_pass(p: Pass, client: Any, base: tuple, context_of: Callable, q: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor, layout: TokenLayout, branches: tuple[str, ...] | None, scale: float | None,
              attn_mask: torch.Tensor | None) -> torch.Tensor:
    if p.frames is None:
        rules = tuple(base) + tuple((r, context_of(client, r)) for r in p.rules)
        plan = build_plan(rules, layout, branches, q.shape[0], q.shape[1])
        return run_plan(plan, q, k, v, layout, scale, attn_mask, want_mass=False)[0]
    start, stop = p.frames
    if stop > layout.num_frames:
        raise SteeringError(f"a pass over frames {p.frames} in a call of {layout.num_frames} latent frames")
    if base:
        raise SteeringError(f"a windowed pass (frames {p.frames}) runs plain attention among its frames; other logit "
                            f"rules are on in this call ({base[0][0]!r}): apply them in another session run")
    if layout.segments or attn_mask is not None:
        raise SteeringError(f"a windowed pass needs a video-only call without attn_mask (it slices the call to its "
                            f"frames); this call has layout {layout.describe()}"
                            f"{' and an attn_mask' if attn_mask is not None else ''}")
    t = layout.tokens_per_frame
    a, b = layout.video_start + start * t, layout.video_start + stop * t
    out = torch.zeros((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
    out[:, :, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=scale)
    return out
