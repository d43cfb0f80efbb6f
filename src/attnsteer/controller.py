"""One controller per hooked transformer: tracks each forward's step, branch and layout, and
answers every self-attention call with the rules and recorders of all sessions attached to it.

Sessions (``at.steer``, ``at.inspect``) attach *clients*; the first client installs the hooks and
the last one to leave removes them, so sessions nest and combine on the same model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import torch
import torch.nn.functional as F

from .errors import ConfigError, KernelError, SteeringError, describe_rule
from .hooks import HOOK_NAME, AttentionHook, InstalledHook, SDPAInterceptor, refresh_registry_caches
from .execute import cross_layout, run_cross_plan, run_plan
from .guidance import BlockSkipHook, GuidanceShift, PerturbedGuidance, first_tensor, replace_first_tensor
from .layout import TokenLayout
from .outputs import OutputStage, OutputTransform, split_output_rules
from .parallel import context_parallel_config, gather_heads, head_slice
from .plan import build_plan
from .plugins.base import Adapter, bind_forward_inputs
from .plugins.branches import item_of_rows
from .rules import Rule
from .schedules import StepInfo
from .stepping import StepTracker
from .selectors import SelectionContext


@attrs.frozen
class LayerInfo:
    """One self-attention module: its index among the model's self-attention layers and its names."""

    index: int
    name: str
    component: str

    @property
    def names(self) -> tuple[str, ...]:
        qualified = f"{self.component}.{self.name}" if self.component else self.name
        return (self.name, qualified)

    @property
    def qualified(self) -> str:
        return self.names[1]


@attrs.frozen
class ForwardState:
    """What one forward of the transformer looks like to its attention calls."""

    layout: TokenLayout
    step: StepInfo
    branches: tuple[str, ...] | None
    context: str | None
    text_length: int | None = None  # text keys of the separate cross-attention calls, if the model has them


class Client(Protocol):
    """What a session attaches: rules to apply and/or a sink for attention mass."""

    rules: tuple[Rule, ...]
    wants_mass: bool

    def selection_context(self, layout: TokenLayout) -> SelectionContext:
        """What this client's selectors resolve against in a call of ``layout`` (its prompt's words)."""
        ...

    def on_call(self, state: ForwardState, layer: LayerInfo, applied: list[Rule], mass: torch.Tensor | None) -> None: ...


class Controller:
    """Hooks of one transformer and the clients attached to it."""

    def __init__(self, model: torch.nn.Module, component: str, adapter: Adapter) -> None:
        self.model = model
        self.component = component
        self.adapter = adapter
        self.clients: list[Client] = []
        self.steps = StepTracker()
        self.context: str | None = None
        self.state: ForwardState | None = None
        self._installed: list[InstalledHook] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._copied = False
        self.layers: list[tuple[str, LayerInfo]] = []  # (attention kind, layer) of every hooked module
        self.seen_steps: set[StepInfo] = set()
        self._frame_limits: dict[int, frozenset[int]] = {}  # per call: rules on for some frames only
        self.seen_branches: set[str] = set()
        self.perturbing: PerturbedGuidance | None = None  # set during the perturbed forward
        self._skip_hooks: set[int] = set()
        self.guidance_shift = GuidanceShift()  # cond - perturbed of this step, for the rows of every branch

    # --- attaching -----------------------------------------------------------------------
    def attach(self, client: Client, pipeline: Any = None, num_steps: int | None = None) -> None:
        cross = [r for r in client.rules if r.attention == "cross"]
        if cross and not self.adapter.cross_attention_modules(self.model):
            raise SteeringError(
                f"{describe_rule(cross[0], None)}: {type(self.model).__name__} has no separate cross-attention "
                "(its text, if any, sits in the self-attention sequence): use attention='self' with at.text / at.words"
            )
        if pipeline is not None:
            self.steps.add_pipeline(pipeline)
        if num_steps is not None:
            self.steps.num_steps = num_steps
        if not self.clients:
            self._install()
        try:
            self._install_block_skips(getattr(client, "guidance", None))
        except BaseException:
            if not self.clients:
                self._uninstall()
            raise
        self.clients.append(client)

    def detach(self, client: Client) -> None:
        self.clients.remove(client)
        if not self.clients:
            _CONTROLLERS.pop(id(self.model), None)
            self._uninstall()

    def __deepcopy__(self, memo: dict) -> Controller:
        """``copy.deepcopy`` of a hooked model copies its hooks and so this controller. The copy is
        never steered: its controller has no clients and, at the copy's first forward, removes the
        copied hooks, so the copy runs (and stays) exactly like an unsteered model."""
        clone = Controller.__new__(Controller)
        memo[id(self)] = clone  # the copied hooks refer to the clone, not to this controller
        clone.__init__(copy.deepcopy(self.model, memo), self.component, copy.deepcopy(self.adapter, memo))
        clone._installed = copy.deepcopy(self._installed, memo)
        clone._copied = True
        return clone

    def _install(self) -> None:
        modules = self.adapter.attention_modules(self.model)
        if not modules:
            raise SteeringError(f"{self.adapter!r} found no self-attention modules in {type(self.model).__name__}")
        try:
            for attention, found in (("self", modules), ("cross", self.adapter.cross_attention_modules(self.model))):
                for index, (name, module) in enumerate(found):
                    layer = LayerInfo(index=index, name=name, component=self.component)
                    self.layers.append((attention, layer))
                    hook = AttentionHook(self, layer, attention)
                    self._installed.append(InstalledHook(module, hook))
            self._handles.append(self.model.register_forward_pre_hook(self._forward_start, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._perturb_after, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._forward_end, always_call=True))
        except BaseException:
            self._uninstall()
            raise
        refresh_registry_caches(self.model)

    def _install_block_skips(self, guidance: PerturbedGuidance | None) -> None:
        """STG-R: a skip hook on each block the client's perturbed forward skips (once per block)."""
        if guidance is None or not guidance.skip_blocks:
            return
        blocks = self.adapter.blocks(self.model)
        bad = [i for i in guidance.skip_blocks if i >= len(blocks)]
        if bad:
            raise SteeringError(f"perturbed guidance skip_blocks {bad} out of range: {type(self.model).__name__} has "
                                f"{len(blocks)} blocks ({self.adapter.block_pattern!r}); allowed 0..{len(blocks) - 1}")
        for i in guidance.skip_blocks:
            if i not in self._skip_hooks:
                self._installed.append(InstalledHook(blocks[i][1], BlockSkipHook(self, i)))
                self._skip_hooks.add(i)

    def skips_block(self, index: int) -> bool:
        """Whether block ``index`` returns its input in this forward (the perturbed forward of STG-R)."""
        return self.perturbing is not None and index in self.perturbing.skip_blocks

    def _perturb_after(self, model: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook: perturbed guidance after each forward (``model.forward`` runs it without re-entering hooks)."""
        return self.perturb(model.forward, args, kwargs, output)

    def perturb(self, forward: Callable, args: tuple, kwargs: dict, output: Any) -> Any:
        """After each forward while perturbed guidance is on: the perturbed forward after a conditional
        one, and ``s (cond - perturbed)`` added to every row (see :mod:`attnsteer.guidance`)."""
        state = self.state
        clients = [c for c in self.clients if getattr(c, "guidance", None) is not None]
        if state is None or not clients or not state.branches:
            return output
        guidance = clients[0].guidance
        strength = guidance.scale_at(state.step)
        if strength == 0:
            return output
        rescale = getattr(self.steps.pipeline, "_guidance_rescale", 0.0) or 0.0
        if rescale > 0:
            raise SteeringError(
                f"perturbed guidance on {type(self.model).__name__} with guidance_rescale={rescale}: the pipeline "
                "rescales by the standard deviation of the conditional prediction, which attnsteer has shifted by "
                "s (cond - perturbed), so the result would not be the published formula; call the pipeline with "
                "guidance_rescale=0"
            )
        prediction = first_tensor(output)
        if "cond" in state.branches:
            self.state, self.perturbing = attrs.evolve(state, branches=("perturbed",) * len(state.branches)), guidance
            try:
                perturbed = first_tensor(forward(*args, **kwargs))
            finally:
                self.state, self.perturbing = state, None
        else:
            perturbed = None
        shift = self.guidance_shift.shift(state, prediction, perturbed)
        return replace_first_tensor(output, prediction + strength * shift)

    def _uninstall(self) -> None:
        errors = []
        for item in reversed(self._installed):
            try:
                item.remove()
            except Exception as exc:  # keep removing the others, then report
                errors.append(exc)
        for handle in self._handles:
            handle.remove()
        self._installed.clear()
        self._handles.clear()
        self._skip_hooks.clear()
        self.guidance_shift.clear()
        self.layers.clear()
        self.state = None
        refresh_registry_caches(self.model)
        if errors:
            raise errors[0]

    def _check_outer_hooks(self) -> None:
        """A diffusers hook enabled on an attention module after the session began runs before attnsteer
        and may return without computing attention (a cache, a layer skip): where a rule or a recording
        needs that module, the two cannot both hold, so say which."""
        recording = any(c.wants_mass for c in self.clients)
        for item in self._installed:
            hook = item.hook
            if not isinstance(hook, AttentionHook):
                continue
            outer = item.outer_hooks()
            if not outer:
                continue
            layer = hook.layer
            rules = [r for c in self.clients for r in c.rules
                     if r.attention == hook.attention and r.matches_layer(layer.index, layer.names)]
            if rules or (recording and hook.attention == "self"):
                who = describe_rule(rules[0], layer.qualified) if rules else f"recording in module {layer.qualified!r}"
                raise SteeringError(
                    f"{who}: the diffusers hooks {outer} were enabled on this module after the attnsteer session began; "
                    "they run first and may return without computing attention, so both cannot hold. Enable them "
                    "before the session (attnsteer then raises at a call they skip), disable them, or filter this "
                    "layer out with Rule(layers=...)"
                )

    def _remove_copied_hooks(self) -> None:
        """In a deep copy: take the copied attention hooks and forward hooks off the copied model."""
        for item in self._installed:
            item.remove()
        self._installed.clear()
        model = self.model
        for hooks, flags in ((model._forward_pre_hooks, model._forward_pre_hooks_with_kwargs),
                             (model._forward_hooks, model._forward_hooks_always_called)):
            for key in [k for k, fn in hooks.items() if getattr(fn, "__self__", None) is self]:
                hooks.pop(key)
                flags.pop(key, None)
        refresh_registry_caches(self.model)

    # --- per forward ---------------------------------------------------------------------
    def set_context(self, name: str | None) -> None:
        self.context = name

    def _forward_start(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self._copied:
            self._remove_copied_hooks()
            return
        self._check_outer_hooks()
        inputs = bind_forward_inputs(model, args, kwargs)
        layout = self.adapter.layout(model, inputs)
        timestep = self.adapter.timestep(model, inputs)
        batch = _batch_size(inputs)
        branches = self.adapter.branches(model, inputs, self.context, batch, self.steps.pipeline)
        step = self.steps.info(timestep, self.adapter.frame_timesteps(model, inputs))
        self.state = ForwardState(layout=layout, step=step, branches=branches, context=self.context,
                                  text_length=self.adapter.text_length(model, inputs))
        self.seen_steps.add(self.state.step)
        self.seen_branches.update(branches or ("unknown",))

    def _forward_end(self, model: torch.nn.Module, args: tuple, output: Any) -> None:
        self.state = None

    # --- per attention call --------------------------------------------------------------
    def _active_rules(self, layer: LayerInfo, state: ForwardState, attention: str) -> list[tuple[Client, Rule]]:
        active = []
        for client in self.clients:
            for rule in client.rules:
                if rule.attention != attention or not rule.matches_layer(layer.index, layer.names):
                    continue
                try:
                    frames = rule.when.active_frames(state.step)
                    on = rule.when.active(state.step) if frames is None else any(frames)
                except ConfigError as exc:
                    raise type(exc)(f"{describe_rule(rule, layer.qualified)}: {exc}") from exc
                if on and frames is not None and not all(frames):
                    self._limit_to_frames(rule, layer, attention, frozenset(f for f, o in enumerate(frames) if o))
                if on:
                    active.append((client, rule))
        return active

    def _limit_to_frames(self, rule: Rule, layer: LayerInfo, attention: str, frames: frozenset[int]) -> None:
        """Remember that ``rule`` is on only for the queries of ``frames`` in this call (per-frame schedules)."""
        if attention != "self" or isinstance(rule.transform, OutputTransform):
            raise SteeringError(
                f"{describe_rule(rule, layer.qualified)}: its schedule is on for latent frames {sorted(frames)} only "
                "(per-frame timesteps); attnsteer follows per-frame schedules for self-attention logit rules, not "
                f"for {'output transforms' if attention == 'self' else attention + '-attention rules'}"
            )
        self._frame_limits[id(rule)] = frames

    def _context(self, client: Client, rule: Rule, layout: TokenLayout, rows: tuple[bool, ...] | None) -> SelectionContext:
        """The selection context of ``rule`` in this call: its client's (restricted to the client's batch rows when
        it has a batch share), limited to the frames its schedule is on in."""
        ctx = client.selection_context(layout)
        ctx = ctx if rows is None else attrs.evolve(ctx, rows=rows)
        frames = self._frame_limits.get(id(rule))
        return ctx if frames is None else attrs.evolve(ctx, query_frames=frames)

    def run_attention(
        self, layer: LayerInfo, attention: str, module: torch.nn.Module, forward: Callable, args: tuple, kwargs: dict
    ) -> Any:
        """One forward of a hooked attention module: steered and recorded through its SDPA calls."""
        state = self.state
        if state is None:
            if self.clients:
                raise SteeringError(
                    f"{attention}-attention module {layer.qualified!r} ran outside a forward of its transformer "
                    f"{type(self.model).__name__}; attnsteer learns the token layout from that forward"
                )
            return forward(*args, **kwargs)
        self._frame_limits = {}
        active = self._active_rules(layer, state, attention)
        recorders = [c for c in self.clients if c.wants_mass] if attention == "self" else _cross_recorders(self.clients)
        if not active and not recorders:
            return forward(*args, **kwargs)
        seen = []
        outputs = split_output_rules(active)[1]
        stage = OutputStage(outputs, layer.qualified, self.adapter) if outputs else None
        _check_context_parallel(module, attention, layer, active, recorders, stage)

        def handle(*sdpa_args: Any, **sdpa_kwargs: Any) -> torch.Tensor:
            if attention == "cross":
                return self._cross_call(layer, state, active, seen, sdpa_args, sdpa_kwargs, recorders)
            return self._attention_call(layer, state, active, recorders, seen, sdpa_args, sdpa_kwargs, stage, module)

        with SDPAInterceptor(handle):
            output = forward(*args, **kwargs)
        if not seen:
            raise SteeringError(f"{_subject(active, layer)}: {_why_no_attention(module, attention)}")
        return output if stage is None else stage.apply(output, state.layout)

    def _attention_call(
        self,
        layer: LayerInfo,
        state: ForwardState,
        active: list[tuple[Client, Rule]],
        recorders: list[Client],
        seen: list[bool],
        args: tuple,
        kwargs: dict,
        stage: OutputStage | None = None,
        module: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa = _sdpa_arguments(args, kwargs)
        if q.shape[-2] != k.shape[-2]:  # cross-attention inside a self-attention module: leave it
            return F.scaled_dot_product_attention(*args, **kwargs)
        call = len(seen)  # this call's index within the module's forward
        seen.append(True)
        where = _subject(active, layer)
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
        if layout.num_groups != forward_layout.num_groups and recorders:
            raise SteeringError(
                f"{where}: this call's layout {layout.describe()} has other token groups than its forward's "
                f"{forward_layout.describe()}, so its attention mass cannot join the recording"
            )
        if branches != state.branches:  # the model folds other axes into the attention batch (SVD)
            state = attrs.evolve(state, branches=branches)
        recorded = state  # recordings keep the forward's layout (same groups, asserted above)
        if layout != forward_layout:  # one call per batch row over its valid tokens (Mochi)
            state = attrs.evolve(state, layout=layout)
        outputs = stage.read(q, k, scale, layout, state.branches) if stage is not None else []
        rows = {id(c): _client_rows(c, state.branches, q.shape[0]) for c in self.clients}
        heads = None if module is None else head_slice(module, q.shape[1], where)
        try:
            plan = build_plan(
                tuple((rule, self._context(client, rule, layout, rows[id(client)]))
                      for client, rule in split_output_rules(active)[0]),
                layout, state.branches,
                q.shape[0], q.shape[1], want_mass=bool(recorders),
                head_offset=0 if heads is None else heads.offset, total_heads=None if heads is None else heads.total,
            )
        except ConfigError as exc:
            raise type(exc)(f"in self-attention module {layer.qualified!r}: {exc}") from exc
        if plan.path == "plain" and not recorders and not plan.identity and plan.scale_factor == 1.0:
            if not outputs and not plan.applied:
                return F.scaled_dot_product_attention(*args, **kwargs)
            out, mass = F.scaled_dot_product_attention(*args, **kwargs), None  # e.g. a logit scale of 1 applied
        else:
            try:
                with_maps = _record_spatial_maps(recorders, plan, q, k, v, state, layer, scale, attn_mask)
                out, mass = with_maps or run_plan(plan, q, k, v, layout, scale, attn_mask, want_mass=bool(recorders))
            except (KernelError, SteeringError) as exc:
                raise type(exc)(f"{where}: {exc}") from exc
        if heads is not None and recorders and mass is not None:
            mass = gather_heads(mass, heads)  # every rank records all heads, as one process would
        for client in self.clients:
            mine = [rule for c, rule in active if c is client and (rule in plan.applied or (c, rule) in outputs)]
            if mine or client.wants_mass:
                _notify(client, recorded, layer, mine, mass, rows[id(client)])
        return out


    def _cross_call(
        self, layer: LayerInfo, state: ForwardState, active: list[tuple[Client, Rule]], seen: list[bool],
        args: tuple, kwargs: dict, recorders: list[Client] = (),
    ) -> torch.Tensor:
        """A cross-attention SDPA call: steered when its keys are the forward's text tokens (image-key
        calls, as in Wan I2V's attn2, pass through); the plan runs on the joint [text, video] layout."""
        q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa = _sdpa_arguments(args, kwargs)
        if k.shape[-2] != state.text_length:
            return F.scaled_dot_product_attention(*args, **kwargs)
        seen.append(True)
        where = _subject(active, layer)
        layout = cross_layout(state.layout, state.text_length)
        if q.dim() != 4 or q.shape[-2] != state.layout.seq_len or dropout_p or is_causal or enable_gqa:
            raise SteeringError(
                f"{where}: a cross-attention call with q {tuple(q.shape)}, k {tuple(k.shape)} (dropout_p={dropout_p}, "
                f"is_causal={is_causal}, enable_gqa={enable_gqa}) does not match {state.layout.seq_len} video queries "
                f"and {state.text_length} text keys"
            )
        branches = self.adapter.attention_branches(state.branches, q.shape[0])
        try:
            rows = {id(c): _client_rows(c, branches, q.shape[0]) for c in self.clients}
            plan = build_plan(tuple((rule, self._context(client, rule, layout, rows[id(client)])) for client, rule in active),
                              layout, branches, q.shape[0], q.shape[1])
            out = run_cross_plan(plan, q, k, v, layout, scale, attn_mask)
            if recorders:
                from .map_recording import record_cross_maps  # imports record, which imports this module

                record_cross_maps([c.maps for c in recorders], plan, q, k, v, state, layer, scale, attn_mask, layout)
        except (ConfigError, KernelError, SteeringError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        for client in self.clients:
            mine = [rule for c, rule in active if c is client and rule in plan.applied]
            if mine:
                _notify(client, state, layer, mine, None, rows[id(client)])
        return out


def _check_context_parallel(module: torch.nn.Module, attention: str, layer: LayerInfo, active: list, recorders: list,
                            stage: OutputStage | None) -> None:
    """Under diffusers context parallelism: ring is refused; under Ulysses, what sees sequence-sharded
    tensors (cross-attention queries, module outputs, spatial maps) is refused, naming it."""
    cp = context_parallel_config(module)
    if cp is None:
        return
    where = _subject(active, layer)
    head_slice(module, 1, where)  # raises for ring attention
    if attention == "cross":
        raise SteeringError(f"{where}: under context parallelism cross-attention runs on a shard of the video "
                            "queries; cross-attention rules and maps are not supported there yet")
    if stage is not None:
        raise SteeringError(f"{where}: under context parallelism a module's output holds a shard of the tokens; "
                            "output rules are not supported there yet")
    if any(getattr(c, "maps", None) is not None for c in recorders):
        raise SteeringError(f"recording in module {layer.qualified!r}: spatial maps are not recorded under context "
                            "parallelism yet (frame maps are)")


def _client_rows(client: Client, branches: tuple[str, ...] | None, batch: int) -> tuple[bool, ...] | None:
    """The rows of a call that belong to a client with a ``batch_item`` (index, count) share, else None."""
    item = getattr(client, "batch_item", None)
    if item is None:
        return None
    index, count = item
    return tuple(i == index for i in item_of_rows(branches, batch, count))


def _notify(client: Client, state: ForwardState, layer: LayerInfo, applied: list[Rule], mass: torch.Tensor | None,
            rows: tuple[bool, ...] | None) -> None:
    """``client.on_call``, seeing only its own rows (branches and mass) when it has a batch share."""
    if rows is not None:
        keep = [r for r, on in enumerate(rows) if on]
        branches = None if state.branches is None else tuple(state.branches[r] for r in keep)
        state = attrs.evolve(state, branches=branches)
        mass = None if mass is None else mass[keep]
    client.on_call(state, layer, applied, mass)


def _cross_recorders(clients: list[Client]) -> list[Client]:
    """The clients whose spatial maps read the text cross-attention (``at.maps.onto(..., attention="cross")``)."""
    return [c for c in clients
            if getattr(c, "maps", None) is not None and any(s.attention == "cross" for s in c.maps.specs)]


def _record_spatial_maps(recorders: list[Client], plan, q, k, v, state, layer, scale, attn_mask):
    """(output, mass) of a call whose recorders keep spatial maps (``at.inspect(maps=...)``), else None."""
    spatial = [c.maps for c in recorders if getattr(c, "maps", None) is not None]
    if not spatial:
        return None
    from .map_recording import record_maps  # imports record, which imports this module

    return record_maps(spatial, plan, q, k, v, state, layer, scale, attn_mask)


def _why_no_attention(module: torch.nn.Module, attention: str) -> str:
    """Why a hooked module ran without the SDPA call attnsteer needed, naming the actual cause."""
    registry = getattr(module, "_diffusers_hook", None)
    others = [name for name in getattr(registry, "hooks", {}) if name != HOOK_NAME]
    if others:
        return (f"the module ran without computing {attention}-attention through SDPA; the diffusers hooks {others} "
                "on it (a cache or a skipped layer) returned first, so the rule cannot apply there: disable them or "
                "filter this layer out with Rule(layers=...)")
    backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
    if attention == "cross":
        return ("no SDPA call of the module had the forward's text tokens as keys, so the cross-attention rule found "
                f"nothing to steer (attention backend: {backend or 'unknown'})")
    return ("the module computed attention without calling torch.nn.functional.scaled_dot_product_attention "
            f"(attention backend: {backend or 'unknown'}), so it cannot be steered or recorded. Non-native backends "
            "(flash, sage, xformers, flex) bypass it: call transformer.set_attention_backend('native') first")


def _subject(active: list[tuple[Client, Rule]], layer: LayerInfo) -> str:
    """Who an error is about: the first active rule in this module, or the recording."""
    return describe_rule(active[0][1], layer.qualified) if active else f"recording in module {layer.qualified!r}"


def _sdpa_arguments(args: tuple, kwargs: dict) -> tuple:
    """F.scaled_dot_product_attention's arguments by name, with its defaults."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    values = dict(defaults)
    values.update(zip(names, args))
    values.update(kwargs)
    return tuple(values[n] for n in names)


def _batch_size(inputs: dict) -> int:
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise SteeringError("cannot tell the batch size: the model's forward got no tensor argument")


_CONTROLLERS: dict[int, Controller] = {}  # by id(model), only while some session is attached to it


def controller_for(model: torch.nn.Module, component: str, adapter: Adapter) -> Controller:
    """The controller of ``model``, created on first use (one per model, shared by sessions). The
    registry holds it only while a session is attached, so a model left by every session can be freed."""
    controller = _CONTROLLERS.get(id(model))
    if controller is None or controller.model is not model or not controller.clients:
        controller = Controller(model, component, adapter)
        _CONTROLLERS[id(model)] = controller
    return controller
