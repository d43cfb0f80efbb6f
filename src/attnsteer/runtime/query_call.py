"""Query transforms at run time (:mod:`attnsteer.language.query_transforms`): the selected video queries of one
self-attention call, as frame grids, replaced by their transform before the logits.

``placement="attention"``: applied by the module's :class:`~attnsteer.runtime.module_call.ModuleCall` to the q of
its SDPA call (after q-norm and RoPE). ``placement="to_q"``: applied by a forward hook on the module's ``to_q``
projection, held only while the module's forward runs (:func:`to_q_hooks`); nothing stays on the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..errors import ConfigError, SteeringError, describe_rule
from ..language.layout import TokenLayout
from .call_state import client_rows
from .context_parallel import context_parallel_config
from .plan import select

Pair = tuple[Any, Any]  # (client, rule)


def is_query_rule(rule: Any) -> bool:
    return rule.transform.kind == "query"


def split_query_rules(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(the other rules, the query rules placed at the attention call) of a module call's ``(client, rule)`` pairs;
    ``to_q`` query rules are in neither (their hook applies them)."""
    others = [p for p in pairs if not is_query_rule(p[1])]
    at_call = [p for p in pairs if is_query_rule(p[1]) and p[1].transform.placement == "attention"]
    return others, at_call


def acts_outside_sdpa(rule: Any) -> bool:
    """Whether a rule acts outside the module's SDPA calls (a query transform on ``to_q``'s output)."""
    return is_query_rule(rule) and rule.transform.placement == "to_q"


def transform_queries(q: torch.Tensor, pairs: Sequence[Pair], layout: TokenLayout, branches: tuple[str, ...] | None,
                      context: Callable[[Any, Any], Any], module: str, head_offset: int = 0,
                      total_heads: int | None = None) -> tuple[torch.Tensor, list[Pair]]:
    """(q [B, H, N, D] with the query rules ``pairs`` applied in order, the pairs applied); ``q`` itself when none
    applies. ``context(client, rule)`` is the rule's selection context in this call, ``module`` the module's name."""
    applied: list[Pair] = []
    batch, heads = q.shape[0], q.shape[1]
    for client, rule in pairs:
        where = describe_rule(rule, module)
        s = _select(rule, context(client, rule), branches, batch, heads, where, head_offset, total_heads)
        if not (s.rows.any() and s.heads.any() and s.query.any()):
            continue
        start, stop = _video_span(rule, layout, s.query, where)
        rows = s.rows.nonzero().flatten().to(q.device)
        part = q.index_select(0, rows)[:, :, start:stop]  # [b, H, F*T, D]
        b, _, n, d = part.shape
        grid = part.permute(0, 2, 1, 3).reshape(b, n, heads * d)
        new = _apply(rule, grid, layout, where).reshape(b, n, heads, d).permute(0, 2, 1, 3)
        keep = (s.heads[None, :, None, None] & s.query[start:stop][None, None, :, None]).to(q.device)
        if not applied:
            q = q.clone()  # never the model's own tensor
        q[rows, :, start:stop] = torch.where(keep, new, part)
        applied.append((client, rule))
    return q, applied


def transform_projected(y: torch.Tensor, pairs: Sequence[Pair], call: Any) -> tuple[torch.Tensor, list[Pair]]:
    """(``to_q``'s output y [B, N, C] with the query rules ``pairs`` applied, the pairs applied), in the module
    forward of ``call`` (a ModuleCall); y's rows are the layout's tokens, or its video tokens only."""
    layout, branches = call.state.layout, call.state.branches
    where = describe_rule(pairs[0][1], call.layer.qualified)
    if y.dim() != 3 or (branches is not None and y.shape[0] != len(branches)):
        raise SteeringError(f"{where}: to_q's output has shape {tuple(y.shape)}, not [batch {y.shape[0]}, tokens, "
                            "channels] of the forward's batch rows; use placement='attention'")
    if y.shape[1] == layout.seq_len:
        shift = 0
    elif y.shape[1] == layout.video_end - layout.video_start:  # to_q sees the video stream only (text: add_q_proj)
        shift = layout.video_start
    else:
        raise SteeringError(f"{where}: to_q's output has {y.shape[1]} tokens, neither the call's {layout.seq_len} nor "
                            f"its {layout.video_end - layout.video_start} video tokens ({layout.describe()}), so its "
                            "rows cannot be told; use placement='attention'")
    applied: list[Pair] = []
    for client, rule in pairs:
        where = describe_rule(rule, call.layer.qualified)
        ctx = call._context(client, rule, layout, client_rows(client, branches, y.shape[0]))
        s = _select(rule, ctx, branches, y.shape[0], 1, where)
        if not (s.rows.any() and s.query.any()):
            continue
        start, stop = _video_span(rule, layout, s.query, where)
        rows = s.rows.nonzero().flatten().to(y.device)
        part = y.index_select(0, rows)[:, start - shift:stop - shift]  # [b, F*T, C]
        new = _apply(rule, part, layout, where)
        if not applied:
            y = y.clone()
        y[rows, start - shift:stop - shift] = torch.where(s.query[start:stop][None, :, None].to(y.device), new, part)
        applied.append((client, rule))
    return y, applied


@contextlib.contextmanager
def to_q_hooks(call: Any, module: torch.nn.Module) -> Iterator[None]:
    """While ``module``'s forward runs under ``call``: its ``to_q``-placed query rules on ``to_q``'s output (a forward
    hook on ``module.to_q``, removed on exit). Raises where they cannot be reached without patching the model."""
    pairs = [p for p in call.active if acts_outside_sdpa(p[1])]
    if not pairs:
        yield
        return
    where = describe_rule(pairs[0][1], call.layer.qualified)
    projection = getattr(module, "to_q", None)
    if not isinstance(projection, torch.nn.Module):
        raise SteeringError(f"{where}: placement='to_q' needs the module's to_q projection, which "
                            f"{type(module).__name__} does not have (fused projections?); it cannot be reached without "
                            "patching the model, use placement='attention' (after q-norm and RoPE)")
    if context_parallel_config(module) is not None:
        raise SteeringError(f"{where}: under context parallelism to_q's output holds a shard of the tokens; query "
                            "transforms are not supported there yet")
    seen: list[int] = []

    def hook(_: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        out, applied = transform_projected(output, pairs, call)
        call.queried.extend(p for p in applied if p not in call.queried)
        seen.append(1)
        return out

    handle = projection.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    if not seen:
        raise SteeringError(f"{where}: placement='to_q', but {type(module).__name__}'s forward never called its to_q "
                            "projection (fused projections?), so it cannot be reached without patching the model; "
                            "use placement='attention' (after q-norm and RoPE)")


def _select(rule: Any, ctx: Any, branches: tuple[str, ...] | None, batch: int, heads: int, where: str,
            head_offset: int = 0, total_heads: int | None = None) -> Any:
    try:
        return select(rule, ctx, branches, batch, heads, head_offset, total_heads)
    except ConfigError as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def _video_span(rule: Any, layout: TokenLayout, query: torch.Tensor, where: str) -> tuple[int, int]:
    """The video tokens [start, stop) of the call, checked to hold every selected query and to have a frame grid."""
    start, stop = layout.video_start, layout.video_end
    if layout.grid is None:
        raise SteeringError(f"{where}: the adapter gives no per-frame token grid "
                            "(TokenLayout.grid) for this call, which a query transform works on")
    if bool(query[:start].any() or query[stop:].any()):
        raise SteeringError(f"{where}: {rule.transform!r} works on the frame grids of "
                            f"the video tokens, but Rule.query selects other tokens too ({layout.describe()}); use "
                            "at.video or at.frames[...]")
    return start, stop


def _apply(rule: Any, tokens: torch.Tensor, layout: TokenLayout, where: str) -> torch.Tensor:
    """The rule's transform of ``tokens`` [b, F*T, C] through their grid [b, F, h, w, C]."""
    b, n, c = tokens.shape
    rows, cols = layout.grid  # type: ignore[misc]
    try:
        out = rule.transform.apply(tokens.reshape(b, layout.num_frames, rows, cols, c))
    except ConfigError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    return out.reshape(b, n, c)
