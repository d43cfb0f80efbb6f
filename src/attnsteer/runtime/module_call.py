"""One forward of a hooked attention module: every SDPA call it makes, planned, steered and recorded.

The controller decides per module forward which rules are on and who records; a :class:`ModuleCall`
then answers the module's SDPA calls (it is the handler the :class:`~attnsteer.runtime.hooks.SDPAInterceptor`
calls), holding that forward's state explicitly.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import torch

from ..contract.adapter import Adapter
from ..contract.streams import STREAM_KINDS
from ..errors import ConfigError, KernelError, SteeringError, describe_rule
from ..language.layout import TokenLayout
from ..language.rules import Rule
from ..language.selectors import SelectionContext
from . import flash_routing
from ..kernels.prepared import prepare_groups
from .call_cache import CallCache, CallClass, PreparedCall
from .call_maps import record_cross_maps, record_maps
from .call_state import Client, ForwardState, LayerInfo, client_rows, notify, sdpa_arguments
from .context_parallel import gather_heads, head_slice
from .execute import cross_layout, run_cross_plan, run_plan
from .multi_pass import run_multi_pass
from .outputs import OutputStage
from .plan import CallPlan, build_plan
from .query_call import transform_queries
from .stream_call import stream_call


@attrs.define
class ModuleCall:
    """The SDPA calls of one forward of one hooked module, with the rules on and the recorders listening."""

    adapter: Adapter
    clients: list[Client]
    layer: LayerInfo
    attention: str  # "self", "cross" or a stream kind (attnsteer.contract.streams)
    state: ForwardState
    active: list[tuple[Client, Rule]]
    recorders: list[Client]
    frame_limits: dict[int, frozenset[int]]  # id(rule) -> the query frames a per-frame schedule is on for
    stage: OutputStage | None = None
    module: torch.nn.Module | None = None
    calls: int = 0  # SDPA calls answered so far (steered or recorded)
    dispatched: int = 0  # diffusers dispatcher calls made so far in the module's forward (runtime.interception)
    queried: list[tuple[Client, Rule]] = attrs.field(factory=list)  # query rules applied on to_q's output (query_call)
    kind: CallClass | None = None  # what this module's calls share while these rules are on (runtime.call_cache)
    cache: CallCache | None = None  # the controller's prepared calls

    @property
    def subject(self) -> str:
        """Who an error is about: the first active rule in this module, or the recording."""
        return self.kind.subject if self.kind is not None else subject(self.active, self.layer)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.attention == "cross":
            return self._cross_call(args, kwargs)
        if self.attention in STREAM_KINDS or self.attention in (self.state.streams or {}):
            return stream_call(self, args, kwargs)
        return self._self_call(args, kwargs)

    def _context(self, client: Client, rule: Rule, layout: TokenLayout, rows: tuple[bool, ...] | None) -> SelectionContext:
        """The selection context of ``rule`` in this call: its client's (restricted to the client's batch rows when
        it has a batch share), limited to the frames its schedule is on in."""
        ctx = client.selection_context(layout)
        ctx = ctx if rows is None else attrs.evolve(ctx, rows=rows)
        frames = self.frame_limits.get(id(rule))
        return ctx if frames is None else attrs.evolve(ctx, query_frames=frames)

    def _self_call(self, args: tuple, kwargs: dict) -> torch.Tensor:
        q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa = sdpa_arguments(args, kwargs)
        if q.shape[-2] != k.shape[-2]:  # cross-attention inside a self-attention module: leave it
            return flash_routing.unsteered(args, kwargs)
        call = self.calls  # this call's index within the module's forward
        self.calls += 1
        where, layer, active, recorders, state = self.subject, self.layer, self.active, self.recorders, self.state
        forward_layout = state.layout
        layout, branches = self.adapter.call_view(forward_layout, state.branches, q.shape[0], call)
        if q.dim() != 4 or q.shape[-2] != layout.seq_len:
            raise SteeringError(
                f"{where}: the attention call has q of shape {tuple(q.shape)} but {type(self.adapter).__name__} "
                f"expects [B, H, {layout.seq_len}, D] for layout {layout.describe()}"
            )
        if dropout_p or is_causal or enable_gqa:
            raise SteeringError(
                f"{where}: unsupported SDPA arguments (dropout_p={dropout_p}, is_causal={is_causal}, "
                f"enable_gqa={enable_gqa}); attnsteer supports inference-mode bidirectional attention"
            )
        if recorders and layout.num_groups != forward_layout.num_groups:
            raise SteeringError(
                f"{where}: this call's layout {layout.describe()} has other token groups than its forward's "
                f"{forward_layout.describe()}, so its attention mass cannot join the recording"
            )
        if branches != state.branches:  # the model folds other axes into the attention batch (SVD)
            state = attrs.evolve(state, branches=branches)
        recorded = state  # recordings keep the forward's layout (same groups, asserted above)
        if layout != forward_layout:  # one call per batch row over its valid tokens (Mochi)
            state = attrs.evolve(state, layout=layout)
        stage = self.stage
        outputs = stage.read(q, k, scale, layout, state.branches) if stage is not None else []
        heads = None if self.module is None else head_slice(self.module, q.shape[1], where)
        key = (self.kind.key, layout, state.branches, q.shape, None if heads is None else (heads.offset, heads.total),
               q.dtype, q.device)
        prepared = self.cache.calls.get(key)
        if prepared is None:  # the first call of this step class, layout, branches, shape, dtype and device
            prepared = self.cache.prepared(key, lambda: self._prepare(q, layout, state.branches, heads))
        plan, rows = prepared.plan, prepared.rows
        given, queried = q, self.queried
        if self.kind.query_rules:  # query transforms placed at the attention call (after q-norm and RoPE)
            q, queried = transform_queries(q, self.kind.query_rules, layout, state.branches,
                                           lambda c, r: self._context(c, r, layout, rows[id(c)]), layer.qualified,
                                           *((0, None) if heads is None else (heads.offset, heads.total)))
            queried = [*queried, *self.queried]
        if self.kind.passes:  # the user's kernel and a router's call read the given queries, not transformed ones
            with contextlib.nullcontext() if q is given else flash_routing.routed(None):
                out, ran = self._multi_pass(self.kind.passes, plan, q, k, v, layout, state, scale, attn_mask, rows,
                                            (args, kwargs) if q is given else None)
        else:
            out, ran = None, []
        if ran:
            mass = None
        elif prepared.unchanged and q is given:  # the user's own kernel answers (a router's call reads the given q)
            if not outputs and not plan.applied and not queried:
                return flash_routing.unsteered(args, kwargs)
            out, mass = flash_routing.unsteered(args, kwargs), None  # e.g. a zero bias applied: the user's kernel
        else:
            try:
                with_maps = _record_spatial_maps(recorders, plan, q, k, v, state, layer, scale, attn_mask)
                # a router's own call reads the given queries: with transformed ones, the kernels compute the call
                with contextlib.nullcontext() if q is given else flash_routing.routed(None):
                    out, mass = with_maps or run_plan(plan, q, k, v, layout, scale, attn_mask,
                                                      want_mass=bool(recorders), prepared=prepared.groups)
            except (KernelError, SteeringError) as exc:
                raise type(exc)(f"{where}: {exc}") from exc
        if heads is not None and recorders and mass is not None:
            mass = gather_heads(mass, heads)  # every rank records all heads, as one process would
        for client in self.clients:
            mine = list(prepared.applied[id(client)])
            if outputs or queried or ran:
                mine += [rule for c, rule in (*outputs, *queried, *ran) if c is client]
            if mine or client.wants_mass:
                notify(client, recorded, layer, mine, mass, rows[id(client)])
        return out

    def _multi_pass(self, multi: tuple, plan: CallPlan, q, k, v, layout: TokenLayout, state: ForwardState,
                    scale, attn_mask, rows: dict, given: tuple[tuple, dict] | None
                    ) -> tuple[torch.Tensor | None, list]:
        """(output, applied pairs) of a call with a multi-pass rule on (:mod:`attnsteer.runtime.multi_pass`);
        ``given``: the call's SDPA arguments where the user's kernel may answer it (None: transformed queries)."""
        if self.recorders:
            raise SteeringError(f"{describe_rule(multi[0][1], self.layer.qualified)}: a multi-pass call has no single "
                                "attention map to record; record in a run without it")

        def base_output() -> torch.Tensor:
            if given is not None and _changes_no_logit(plan) and not plan.identity and plan.scale_factor == 1.0:
                return flash_routing.unsteered(*given)
            return run_plan(plan, q, k, v, layout, scale, attn_mask, want_mass=False)[0]

        base = tuple((rule, self._context(client, rule, layout, rows[id(client)]))
                     for client, rule in self.kind.logit_rules)
        try:
            return run_multi_pass(multi, base, lambda c, r: self._context(c, r, layout, rows[id(c)]), q, k, v, layout,
                                  state.branches, scale, attn_mask, state.latent, base_output)
        except (ConfigError, KernelError, SteeringError) as exc:
            raise type(exc)(f"{describe_rule(multi[0][1], self.layer.qualified)}: {exc}") from exc

    def _prepare(self, q: torch.Tensor, layout: TokenLayout, branches: tuple[str, ...] | None, heads: Any
                 ) -> PreparedCall:
        """What every call of this step class with ``q``'s shape, dtype and device on ``layout`` and ``branches``
        derives once: the plan, the batch rows, the rules applied, and the grouped kernel's checked groups."""
        rows = {id(c): client_rows(c, branches, q.shape[0]) for c in self.clients}
        logit_rules = self.kind.logit_rules
        try:
            plan = build_plan(
                tuple((rule, self._context(client, rule, layout, rows[id(client)])) for client, rule in logit_rules),
                layout, branches,
                q.shape[0], q.shape[1], want_mass=bool(self.recorders),
                head_offset=0 if heads is None else heads.offset, total_heads=None if heads is None else heads.total,
            )
        except ConfigError as exc:
            raise type(exc)(f"in self-attention module {self.layer.qualified!r}: {exc}") from exc
        applied = {id(client): tuple(rule for c, rule in logit_rules if c is client and rule in plan.applied)
                   for client in self.clients}
        unchanged = (_changes_no_logit(plan) and not self.recorders and not plan.identity
                     and plan.scale_factor == 1.0)
        groups = None if unchanged or self.recorders else _groups_of(plan, q, self.subject)
        return PreparedCall(plan, rows, applied, unchanged, groups)

    def _cross_call(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """A cross-attention SDPA call: steered when its keys are the forward's text tokens (image-key
        calls, as in Wan I2V's attn2, pass through); the plan runs on the joint [text, video] layout."""
        q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa = sdpa_arguments(args, kwargs)
        state, active = self.state, self.active
        if k.shape[-2] != state.text_length:
            return flash_routing.unsteered(args, kwargs)
        self.calls += 1
        where = self.subject
        layout = cross_layout(state.layout, state.text_length)
        if q.dim() != 4 or q.shape[-2] != state.layout.seq_len or dropout_p or is_causal or enable_gqa:
            raise SteeringError(
                f"{where}: a cross-attention call with q {tuple(q.shape)}, k {tuple(k.shape)} (dropout_p={dropout_p}, "
                f"is_causal={is_causal}, enable_gqa={enable_gqa}) does not match {state.layout.seq_len} video queries "
                f"and {state.text_length} text keys"
            )
        branches = self.adapter.attention_branches(state.branches, q.shape[0])
        try:
            rows = {id(c): client_rows(c, branches, q.shape[0]) for c in self.clients}
            plan = build_plan(tuple((rule, self._context(client, rule, layout, rows[id(client)])) for client, rule in active),
                              layout, branches, q.shape[0], q.shape[1])
            out = run_cross_plan(plan, q, k, v, layout, scale, attn_mask)
            if self.recorders:
                record_cross_maps([c.maps for c in self.recorders], plan, q, k, v, state, self.layer, scale, attn_mask,
                                  layout)
        except (ConfigError, KernelError, SteeringError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        for client in self.clients:
            mine = [rule for c, rule in active if c is client and rule in plan.applied]
            if mine:
                notify(client, state, self.layer, mine, None, rows[id(client)])
        return out


def _record_spatial_maps(recorders: list[Client], plan, q, k, v, state, layer, scale, attn_mask):
    """(output, mass) of a call whose recorders keep spatial maps (``at.inspect(maps=...)``), else None."""
    spatial = [c.maps for c in recorders if getattr(c, "maps", None) is not None]
    if not spatial:
        return None
    return record_maps(spatial, plan, q, k, v, state, layer, scale, attn_mask)


def _groups_of(plan: CallPlan, q: torch.Tensor, where: str):
    """A grouped plan's cells and bias checked and on ``q``'s device, once per prepared call; None on other paths."""
    if plan.path != "grouped":
        return None
    try:
        return prepare_groups(plan.cells.to(q.device), plan.cells.to(q.device), plan.bias.to(q.device), q.shape[0],
                              q.shape[1], num_q_groups=plan.num_cells, num_k_groups=plan.num_cells)
    except KernelError as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def _changes_no_logit(plan) -> bool:
    """Whether a plan leaves every logit as it is (no logit rule, or constant biases that are all zero): the call's
    output is then the user's own kernel's, bit for bit."""
    return plan.path == "plain" or (plan.path == "grouped" and plan.bias is not None and not bool(plan.bias.any()))


def subject(active: list[tuple[Client, Rule]], layer: LayerInfo) -> str:
    """Who an error is about: the first active rule in this module, or the recording."""
    return describe_rule(active[0][1], layer.qualified) if active else f"recording in module {layer.qualified!r}"
