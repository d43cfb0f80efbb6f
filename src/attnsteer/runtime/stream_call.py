"""One attention call of a declared stream (audio self-attention, cross-modal calls) or of a self-attention module
whose adapter gives a "self" view (a KV cache), steered on the view's joint layout (see
:mod:`attnsteer.contract.streams`)."""

from __future__ import annotations

from typing import Any

import torch

from ..contract.streams import VIEW_MEANINGS, StreamView
from ..errors import ConfigError, SteeringError
from .call_state import client_rows, notify, sdpa_arguments
from .context_parallel import context_parallel_config
from .execute import run_span_plan
from .plan import build_plan


def stream_call(call: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """One SDPA call of a stream module, or of a self-attention module whose adapter gives a "self" view (a KV
    cache), ``call`` being its :class:`~attnsteer.runtime.module_call.ModuleCall`: steered by the active rules on the
    view's joint layout."""
    q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa = sdpa_arguments(args, kwargs)
    kind, state, where = call.attention, call.state, call.subject
    view = (state.streams or {}).get(kind)
    if view is None:
        raise SteeringError(f"{where}: {type(call.adapter).__name__} gave no layout for its {kind!r} attention calls "
                            "(Adapter.stream_views)")
    if (q.dim() != 4 or q.shape[-2] != view.num_queries or k.shape[-2] != view.num_keys or dropout_p or is_causal
            or enable_gqa):
        raise SteeringError(
            f"{where}: a {kind} attention call with q {tuple(q.shape)}, k {tuple(k.shape)} (dropout_p={dropout_p}, "
            f"is_causal={is_causal}, enable_gqa={enable_gqa}) does not match the {view.num_queries} queries and "
            f"{view.num_keys} keys of its {VIEW_MEANINGS[kind]}"
        )
    if call.module is not None and context_parallel_config(call.module) is not None:
        raise SteeringError(f"{where}: {kind} attention calls with a view (Adapter.stream_views) are not supported "
                            "under context parallelism yet")
    if call.recorders or call.stage is not None:
        who = "recording" if call.recorders else "output transforms"
        raise SteeringError(f"{where}: {who} not supported in {VIEW_MEANINGS[kind]} ({view.num_queries} queries, "
                            f"{view.num_keys} keys): attnsteer steers these calls' logits only")
    call.calls += 1
    branches = call.adapter.attention_branches(state.branches, q.shape[0])
    rows = {id(c): client_rows(c, branches, q.shape[0]) for c in call.clients}
    pairs = tuple((rule, call._context(client, rule, view.layout, rows[id(client)])) for client, rule in call.active)
    try:
        for rule, ctx in pairs:
            _check_reach(rule, ctx, view)
        plan = build_plan(pairs, view.layout, branches, q.shape[0], q.shape[1])
    except ConfigError as exc:
        raise type(exc)(f"in {kind} attention module {call.layer.qualified!r}: {exc}") from exc
    out = run_span_plan(plan, q, k, v, view.queries, view.num_keys, scale, attn_mask)
    for client in call.clients:
        mine = [rule for c, rule in call.active if c is client and rule in plan.applied]
        if mine:
            notify(client, state, call.layer, mine, None, rows[id(client)])
    return out


def _check_reach(rule: Any, ctx: Any, view: StreamView) -> None:
    """Raise when the rule's query (key) selector picks tokens of the joint layout but none of the call's
    queries (keys)."""
    for field, span in (("query", view.queries), ("key", view.keys)):
        mask = getattr(rule, field).token_mask(ctx)
        if bool(mask.any()) and not bool(mask[span[0]:span[1]].any()):
            raise ConfigError(
                f"Rule.{field}={getattr(rule, field)!r} selects none of the {field} tokens of {view.kind} attention "
                f"calls ({VIEW_MEANINGS[view.kind]}; at.audio selects audio tokens, at.video / at.frames[...] video "
                "tokens)"
            )
