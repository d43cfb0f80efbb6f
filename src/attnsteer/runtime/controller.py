"""One controller per hooked transformer: tracks each forward's step, branch and layout, and
answers every self-attention call with the rules and recorders of all sessions attached to it.

Sessions (``at.steer``, ``at.inspect``) attach *clients*; the first client installs the hooks and
the last one to leave removes them, so sessions nest and combine on the same model. While installed, the
controller is found through one attribute of the model and through each hooked module's diffusers hook registry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from ..contract.adapter import Adapter, bind_forward_inputs
from ..contract.streams import STREAM_KINDS, check_attention_kinds, stream_modules
from ..errors import ConfigError, SteeringError, describe_rule
from ..language.guidance import PerturbedGuidance
from ..language.model_layers import ModelDepth
from ..language.rules import Rule
from ..language.schedules import StepInfo
from . import compiled_call, dispatch_routing, flash_routing, interception, joint_context, second_context
from .call_cache import CallCache, class_key
from .call_state import Client, ForwardState, LayerInfo
from .context_parallel import context_parallel_config, head_slice
from .execute import clear_rule_caches
from .guidance import BlockSkipHook, GuidanceShift, in_perturbed_forward, perturb
from .hooks import CONTROLLER_ATTRIBUTE, AttentionHook, InstalledHook, refresh_registry_caches
from .module_call import ModuleCall, subject
from .no_attention import why_no_attention
from .outputs import OutputStage, split_output_rules
from .plan import rule_rows
from .query_call import acts_outside_sdpa, to_q_hooks
from .stepping import LoopPosition, StepTracker

__all__ = ["Client", "Controller", "ForwardState", "LayerInfo", "controller_for"]


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
        self._routes_flash = False
        self._routes_dispatch = False
        self.layers: list[tuple[str, LayerInfo]] = []  # (attention kind, layer) of every hooked module
        self.seen_steps: set[StepInfo] = set()
        self.seen_branches: set[str] = set()
        self.perturbing: PerturbedGuidance | None = None  # set during the perturbed forward
        self.perturbing_client: Client | None = None  # the session whose perturbed forward runs
        self._skip_hooks: set[int] = set()
        self._skipped: dict[PerturbedGuidance, frozenset[int]] = {}  # the blocks each guidance skips here, resolved
        self.guidance_shift = GuidanceShift()  # cond - perturbed of this step, for the rows of every branch
        self.position: LoopPosition | None = None  # set by a user's loop through .step() (stepping.LoopSteps)
        self.call_cache = CallCache()  # what calls derive once per step class (runtime.call_cache); per client set
        self.joint_forward: joint_context.JointForward | None = None  # this forward's extra rows (NAG's joint variant)
        self.kept_conditional: dict[int, tuple[Any, torch.Tensor]] = {}  # STG authors-wan: id(client) -> (step, cond)
        self.dispatched_only: interception.Learned = {}  # modules answered at diffusers' dispatcher (interception)

    # --- attaching -----------------------------------------------------------------------
    def attach(self, client: Client, pipeline: Any = None, num_steps: int | None = None) -> None:
        cross = [r for r in client.rules if r.attention == "cross"]
        joint_context.check_host(cross, self.adapter, self.model)
        check_attention_kinds(client.rules, self.adapter, self.model)
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
        self.call_cache.clear()
        compiled_call.refresh(self)

    def detach(self, client: Client) -> None:
        self.clients.remove(client)
        self.call_cache.clear()
        compiled_call.refresh(self)
        if not self.clients:
            self._uninstall()

    def __deepcopy__(self, memo: dict) -> Controller:
        """``copy.deepcopy`` of a hooked model copies its hooks and so this controller. The copy is never steered: its
        controller has no clients and, at its first forward, removes the copied hooks: it runs as an unsteered one."""
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
            streams = stream_modules(self.adapter, self.model)
            for attention, found in (("self", modules), ("cross", self.adapter.cross_attention_modules(self.model)),
                                     *streams):
                depth = ModelDepth(self.adapter.family, len(found))
                for index, (name, module) in enumerate(found):
                    layer = LayerInfo(index=index, name=name, component=self.component, model=depth)
                    self.layers.append((attention, layer))
                    hook = AttentionHook(self, layer, attention)
                    self._installed.append(InstalledHook(module, hook))
            self._handles.append(self.model.register_forward_pre_hook(self._forward_start, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._perturb_after, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._forward_end, always_call=True))
            self.model.__dict__[CONTROLLER_ATTRIBUTE] = self
            flash_routing.ROUTING.acquire()  # flash-attn called directly reaches the hooked modules' handlers
            self._routes_flash = True
            dispatch_routing.ROUTING.acquire()  # so does diffusers' dispatch_attention_fn, whatever its backend
            self._routes_dispatch = True
        except BaseException:
            self._uninstall()
            raise
        refresh_registry_caches(self.model)

    def _install_block_skips(self, guidance: PerturbedGuidance | None) -> None:
        """STG-R: a skip hook on each block the client's perturbed forward skips (once per block)."""
        if guidance is None or not guidance.skip_blocks:
            return
        blocks = self.adapter.blocks(self.model)
        if not blocks:
            raise SteeringError(f"perturbed guidance {guidance!r} skips blocks, but {self.adapter!r} finds no blocks in "
                                f"{type(self.model).__name__} ({self.adapter.block_pattern!r})")
        chosen = guidance.blocks_in(ModelDepth(self.adapter.family, len(blocks)))
        bad = [i for i in chosen if i >= len(blocks)]
        if bad:
            raise SteeringError(f"perturbed guidance skip_blocks {bad} out of range: {type(self.model).__name__} has "
                                f"{len(blocks)} blocks ({self.adapter.block_pattern!r}); allowed 0..{len(blocks) - 1}")
        self._skipped[guidance] = frozenset(chosen)
        for i in chosen:
            if i not in self._skip_hooks:
                self._installed.append(InstalledHook(blocks[i][1], BlockSkipHook(self, i, blocks[i][0])))
                self._skip_hooks.add(i)

    def skips_block(self, index: int) -> bool:
        """Whether block ``index`` returns its input in this forward (the perturbed forward of STG-R)."""
        return self.perturbing is not None and index in self._skipped.get(self.perturbing, ())

    @torch.compiler.disable  # under torch.compile: run eagerly, one graph break per forward
    def _perturb_after(self, model: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook: perturbed guidance after each forward (``model.forward`` runs it without re-entering hooks)."""
        return self.perturb(model.forward, args, kwargs, joint_context.trim(self, output))

    def perturb(self, forward: Callable, args: tuple, kwargs: dict, output: Any) -> Any:
        """After each forward while perturbed guidance is on: see :func:`attnsteer.runtime.guidance.perturb`."""
        return perturb(self, forward, args, kwargs, output)

    def _uninstall(self) -> None:
        errors = []
        for item in reversed(self._installed):
            try:
                item.remove()
            except Exception as exc:  # keep removing the others, then report
                errors.append(exc)
        for handle in self._handles:
            handle.remove()
        if self._routes_flash:
            flash_routing.ROUTING.release()
            self._routes_flash = False
        if self._routes_dispatch:
            dispatch_routing.ROUTING.release()
            self._routes_dispatch = False
        self._installed.clear()
        self._handles.clear()
        self._skip_hooks.clear()
        self._skipped.clear()
        self.guidance_shift.clear()
        self.layers.clear()
        self.state = None
        if self.model.__dict__.get(CONTROLLER_ATTRIBUTE) is self:
            del self.model.__dict__[CONTROLLER_ATTRIBUTE]
        refresh_registry_caches(self.model)
        clear_rule_caches()  # cached plans hold the rules, and so whatever their score functions reference
        if errors:
            raise errors[0]

    def _check_outer_hooks(self) -> None:
        """A diffusers hook enabled on an attention module after the session began runs before attnsteer and may return
        without computing attention (a cache, a layer skip): where a rule or recording needs the module, say which."""
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
                     if r.attention == hook.attention and r.matches_layer(layer.index, layer.names, layer.model)]
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
        if model.__dict__.get(CONTROLLER_ATTRIBUTE) is self:
            del model.__dict__[CONTROLLER_ATTRIBUTE]
        refresh_registry_caches(self.model)

    # --- per forward ---------------------------------------------------------------------
    def set_context(self, name: str | None) -> None:
        self.context = name

    @torch.compiler.disable  # under torch.compile: run eagerly, one graph break per forward
    def _forward_start(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self._copied:
            self._remove_copied_hooks()
            return
        self._check_outer_hooks()
        inputs = bind_forward_inputs(model, args, kwargs)
        layout = self.adapter.layout(model, inputs)
        timestep = self.adapter.timestep(model, inputs)
        batch = self.adapter.batch_size(inputs)
        position = self.position
        if position is not None and position.branch is not None:
            branches: tuple[str, ...] | None = (position.branch,) * batch
        else:
            branches = self.adapter.branches(model, inputs, self.context, batch, self.steps.pipeline)
        if position is not None:
            step = self.steps.at_position(position, timestep)
        else:
            step = self.steps.info(timestep, self.adapter.frame_timesteps(model, inputs))
        self.state = ForwardState(layout=layout, step=step, branches=branches, context=self.context,
                                  text_length=self.adapter.text_length(model, inputs),
                                  streams=self.adapter.stream_views(model, inputs, layout) or None,
                                  latent=_latent(batch, self.adapter.latent_grid(model, inputs)))
        self.seen_steps.add(self.state.step)
        self.seen_branches.update(branches or ("unknown",))
        return joint_context.extend(self, model, args, kwargs)

    @torch.compiler.disable  # under torch.compile: run eagerly, one graph break per forward
    def _forward_end(self, model: torch.nn.Module, args: tuple, output: Any) -> None:
        self.state = None

    # --- per attention call --------------------------------------------------------------
    def _active_rules(self, layer: LayerInfo, state: ForwardState, attention: str
                      ) -> tuple[list[tuple[Client, Rule]], dict[int, frozenset[int]]]:
        """The (client, rule) pairs on in this module at this step, and the query frames of those whose
        per-frame schedule is on for some frames only (by ``id(rule)``)."""
        active, frame_limits = [], {}
        for client in self.clients:
            for rule in client.rules:
                if rule.attention != attention or not rule.matches_layer(layer.index, layer.names, layer.model):
                    continue
                if rule.branch == "perturbed" and not in_perturbed_forward(self.perturbing_client, client):
                    continue
                try:
                    frames = rule.when.active_frames(state.step)
                    on = rule.when.active(state.step) if frames is None else any(frames)
                except ConfigError as exc:
                    raise type(exc)(f"{describe_rule(rule, layer.qualified)}: {exc}") from exc
                if not on or (state.branches is not None and not rule_rows(rule, state.branches, len(state.branches))):
                    continue  # off, or no row of this forward in its branch (branches unknown: its call says why)
                if frames is not None and not all(frames):
                    frame_limits[id(rule)] = _frame_limit(rule, layer, attention, frames)
                active.append((client, rule))
        return active, frame_limits

    def run_attention(
        self, layer: LayerInfo, attention: str, module: torch.nn.Module, forward: Callable, args: tuple, kwargs: dict
    ) -> Any:
        """One forward of a hooked attention module: steered and recorded through its SDPA calls."""
        if attention == "self" and self.joint_forward is not None:
            return joint_context.run(self, layer, module, forward, args, kwargs)
        call = self.begin_attention(layer, attention, module)
        if call is None:
            return forward(*args, **kwargs)
        if second_context.has_second_context(call.active):
            return second_context.run(self, call, module, forward, args, kwargs)
        with interception.catching(call, module, self.dispatched_only), \
                flash_routing.steered_forward(call.subject), to_q_hooks(call, module):
            output = forward(*args, **kwargs)
        return self.end_attention(call, module, output)

    def begin_attention(self, layer: LayerInfo, attention: str, module: torch.nn.Module) -> ModuleCall | None:
        """The handler of one forward of a hooked attention module's SDPA calls; None where it runs as is."""
        state = self.state
        if state is None:
            if self.clients:
                raise SteeringError(
                    f"{attention}-attention module {layer.qualified!r} ran outside a forward of its transformer "
                    f"{type(self.model).__name__}; attnsteer learns the token layout from that forward"
                )
            return None
        active, frame_limits = self._active_rules(layer, state, attention)
        recorders = ([c for c in self.clients if c.wants_mass] if attention == "self"
                     else _cross_recorders(self.clients) if attention == "cross" else [])  # streams: not recorded
        if not active and not recorders:
            return None
        key = class_key(layer.index, attention, active, frame_limits, recorders)
        kind = self.call_cache.call_class(key, lambda: subject(active, layer), active)
        stage = OutputStage(list(kind.output_rules), layer.qualified, self.adapter) if kind.output_rules else None
        _check_context_parallel(module, attention, layer, active, recorders, stage)
        return ModuleCall(self.adapter, self.clients, layer, attention, state, active, recorders, frame_limits,
                          stage, module, kind=kind, cache=self.call_cache)

    def end_attention(self, call: ModuleCall, module: torch.nn.Module, output: Any) -> Any:
        """The module's output once its forward has run under ``call``: checked, then output rules applied."""
        if not call.calls:
            raise SteeringError(f"{call.subject}: {why_no_attention(module, call.attention)}")
        return output if call.stage is None else call.stage.apply(output, call.state.layout)

    @property
    def traceable(self) -> bool:
        """Whether dynamo may trace the hooked modules (:mod:`attnsteer.runtime.compiled_call`): no client has output
        rules or second contexts, which act on a module's output or inputs, nor query rules on to_q's output, all
        outside its SDPA calls."""
        return not any(split_output_rules([(c, r) for r in c.rules])[1] or any(map(acts_outside_sdpa, c.rules))
                       or second_context.has_second_context([(c, r) for r in c.rules]) for c in self.clients)


def _latent(batch: int, grid: tuple[int, int] | None) -> tuple[int, int, int] | None:
    return None if grid is None else (batch, *grid)


def _frame_limit(rule: Rule, layer: LayerInfo, attention: str, frames: tuple[bool, ...]) -> frozenset[int]:
    """The latent frames a per-frame schedule is on for, where attnsteer can follow it (self-attention logit rules)."""
    on = frozenset(f for f, o in enumerate(frames) if o)
    if attention != "self" or rule.transform.kind == "output":
        raise SteeringError(
            f"{describe_rule(rule, layer.qualified)}: its schedule is on for latent frames {sorted(on)} only "
            "(per-frame timesteps); attnsteer follows per-frame schedules for self-attention logit rules, not "
            f"for {'output transforms' if attention == 'self' else attention + '-attention rules'}"
        )
    return on


def _check_context_parallel(module: torch.nn.Module, attention: str, layer: LayerInfo, active: list, recorders: list,
                            stage: OutputStage | None) -> None:
    """Under diffusers context parallelism: ring is refused; under Ulysses, what sees sequence-sharded
    tensors (cross-attention queries, module outputs, spatial maps) is refused, naming it."""
    cp = context_parallel_config(module)
    if cp is None:
        return
    where = subject(active, layer)
    head_slice(module, 1, where)  # raises for ring attention
    if attention in STREAM_KINDS:
        raise SteeringError(f"{where}: under context parallelism {attention} attention rules are not supported yet")
    if attention == "cross":
        raise SteeringError(f"{where}: under context parallelism cross-attention runs on a shard of the video "
                            "queries; cross-attention rules and maps are not supported there yet")
    if stage is not None:
        raise SteeringError(f"{where}: under context parallelism a module's output holds a shard of the tokens; "
                            "output rules are not supported there yet")
    if any(getattr(c, "maps", None) is not None for c in recorders):
        raise SteeringError(f"recording in module {layer.qualified!r}: spatial maps are not recorded under context "
                            "parallelism yet (frame maps are)")


def _cross_recorders(clients: list[Client]) -> list[Client]:
    """The clients whose spatial maps read the text cross-attention (``at.maps.onto(..., attention="cross")``)."""
    return [c for c in clients
            if getattr(c, "maps", None) is not None and any(s.attention == "cross" for s in c.maps.specs)]


def controller_for(model: torch.nn.Module, component: str, adapter: Adapter) -> Controller:
    """The controller of ``model``: the one installed on it (shared by the sessions attached to it), or a new
    one. The model holds it only while a session is attached, so a model left by every session can be freed."""
    controller = model.__dict__.get(CONTROLLER_ATTRIBUTE)
    if controller is None or controller.model is not model or not controller.clients:
        for fn in [*model._forward_pre_hooks.values(), *model._forward_hooks.values()]:
            if getattr(getattr(fn, "__self__", None), "_copied", False):  # a deep copy, steered before its first run
                fn.__self__._remove_copied_hooks()
        controller = Controller(model, component, adapter)
    return controller
