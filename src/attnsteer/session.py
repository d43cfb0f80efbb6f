"""``at.steer`` and ``at.inspect``: context managers that attach rules or a recorder to a target.

A target is a diffusers pipeline (every transformer component an adapter recognises, e.g. both
Wan 2.2 experts), a transformer, or any module an adapter is given for. On exit, normal or by
exception, the last session to leave a model removes every hook it installed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch

from .contract.adapter import Adapter
from .contract.registry import find_adapter, register_adapter, registered_adapter, require_adapter, supported_families
from .errors import ConfigError, SteeringError, UnsupportedModelError
from .inspection.map_specs import check_maps
from .language.guidance import PerturbedGuidance
from .language.layout import TokenLayout
from .language.rules import Recipe, Rule, flatten_rules, guidance_of, initial_noise_of
from .language.selectors import SelectionContext
from .language.words import WordIndex, uses_words
from .runtime import audit, backend_calls, dispatch_routing, initial_noise
from .runtime.controller import Client, Controller, ForwardState, LayerInfo, controller_for
from .runtime.stepping import LoopSteps

PIPELINE_DENOISERS = ("transformer", "transformer_2", "unet")


@attrs.frozen
class Target:
    """One model to hook: its component name in the pipeline, the module, its adapter."""

    component: str
    model: torch.nn.Module
    adapter: Adapter


def resolve_targets(target: Any, adapter: Adapter | None = None) -> tuple[list[Target], Any]:
    """The models to hook in ``target`` and the pipeline they belong to (None for a bare module)."""
    if isinstance(target, torch.nn.Module):
        return [Target("", target, adapter or require_adapter(target))], None
    components = getattr(target, "components", None)
    if not isinstance(components, dict):
        raise UnsupportedModelError(
            f"target must be a diffusers pipeline or a torch.nn.Module, got {type(target).__name__}"
        )
    found = []
    for name, module in components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        if adapter is not None:
            chosen = adapter if name in PIPELINE_DENOISERS else None
        else:
            chosen = find_adapter(module)
        if chosen is not None:
            found.append(Target(name, module, chosen))
    if not found:
        modules = {n: type(m).__name__ for n, m in components.items() if isinstance(m, torch.nn.Module)}
        raise UnsupportedModelError(
            f"unsupported model: no adapter recognises any component of {type(target).__name__} ({modules}); "
            f"supported families: {', '.join(supported_families())}"
        )
    return found, target


class Session:
    """Attaches one client to every model of a target while the ``with`` block runs."""

    def __init__(self, target: Any, client: Client, *, adapter: Adapter | None = None, num_steps: int | None = None,
                 strict: bool = False) -> None:
        if num_steps is not None and (not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1):
            raise ConfigError(f"num_steps must be a positive int or None, got {num_steps!r}")
        if not isinstance(strict, bool):
            raise ConfigError(f"strict must be True or False, got {strict!r}")
        self.targets, self.pipeline = resolve_targets(target, adapter)
        self.given_adapter = adapter
        self.client = client
        self._remembered: list[torch.nn.Module] = []  # models whose adapter= this session lends to nested sessions
        self.num_steps = num_steps
        self.strict = strict
        self._attached: list[Controller] = []
        self._noise: initial_noise.NoiseHook | None = None

    def __enter__(self) -> Any:
        if self._attached:
            raise ConfigError(
                f"this session ({self.client!r}) is already active; a session is entered once: nest a new "
                "at.steer(...) / at.inspect(...) instead"
            )
        if isinstance(self.client, Steering):
            self.client.reset()  # a session object used again reports its own run only
        try:
            for t in self.targets:
                controller = controller_for(t.model, t.component, t.adapter)
                controller.attach(self.client, pipeline=self.pipeline, num_steps=self.num_steps)
                self._attached.append(controller)
                if self.given_adapter is not None and registered_adapter(t.model) is None:
                    register_adapter(t.model, t.adapter)  # a nested session without adapter= finds it
                    self._remembered.append(t.model)
            self.client._controllers = self._attached
            self._noise = initial_noise.install(self.pipeline, getattr(self.client, "initial_noise", None))
            _check_maps_before_run(self._attached)
            audit.report(audit.unmatched_layers(self.client.rules, self._attached), self.strict, "will never apply")
        except BaseException:
            self._detach_all()
            raise
        return self.client

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        problems, missed = [], []
        if exc_type is None and isinstance(self.client, Steering):
            problems = audit.never_applied(self.client.rules, self.client.applied_rules(), self._attached)
        elif exc_type is None:
            problems = audit.nothing_recorded(self.client, self._attached)
            missed = audit.unmatched_map_bins(self.client, self._attached)
            if self.pipeline is None:  # a pipeline tells step and branch; a bare model in a user's loop may not
                audit.report(audit.unknown_positions(self._attached), False, "has calls with")
        self._detach_all()
        audit.report(problems, self.strict, "never applied" if isinstance(self.client, Steering) else "is empty")
        audit.report(missed, self.strict, "kept no spatial maps for a bin")

    def _detach_all(self) -> None:
        self.client._controllers = []
        if self._noise is not None:
            self._noise.remove()
            self._noise = None
        while self._remembered:
            register_adapter(self._remembered.pop(), None)
        errors = []
        while self._attached:
            try:
                self._attached.pop().detach(self.client)
            except Exception as exc:  # detach the rest before reporting
                errors.append(exc)
        if errors:
            raise errors[0]


def word_index(target: Any, rules: tuple[Rule, ...], prompt: str | None, tokenizer: Any = None) -> WordIndex | None:
    """The prompt's word index when some rule selects prompt words (``at.words``, ``at.prompt``):
    tokenised with ``tokenizer`` or the pipeline's own. Raises at once when such a rule has no prompt."""
    wanted = [r for r in rules if uses_words(r)]
    if not wanted:
        return None
    if prompt is None:
        raise ConfigError(f"{wanted[0]!r} selects prompt words: pass prompt=... (and tokenizer=... for a "
                          "pipeline without one) to at.steer / at.inspect")
    return WordIndex.from_tokenizer(tokenizer if tokenizer is not None else getattr(target, "tokenizer", None), prompt)


class Steering(LoopSteps):
    """The client of ``at.steer``: its rules, and a log of where each rule was applied; ``.step()`` serves a user's
    own sampling loop."""

    wants_mass = False
    batch_item: tuple[int, int] | None = None
    initial_noise = None  # a recipe's transform of the pipeline's initial latents (attnsteer.runtime.initial_noise)

    def __init__(self, rules: tuple[Rule, ...], sources: tuple[Rule | Recipe, ...], words: WordIndex | None = None,
                 guidance: PerturbedGuidance | None = None) -> None:
        self.rules = rules
        self.sources = sources
        self.words = words
        self.guidance = guidance
        self._index = {id(rule): i for i, rule in enumerate(rules)}
        self._hits: dict[int, dict[str, set]] = {}
        self.calls = 0
        self.skipped_blocks: set[str] = set()
        self.backends: dict[str, int] = {}  # attention backend the steered calls came from -> how many
        self.routes: dict[str, dict[str, int]] = {}  # backend -> {"backend" | "attnsteer": steered calls each computed}

    def reset(self) -> None:
        """Forget where the rules applied (each ``with`` block of a session reports its own run)."""
        self._hits, self.calls, self.skipped_blocks, self.backends, self.routes = {}, 0, set(), {}, {}

    def on_block_skip(self, block: str) -> None:
        """The perturbed forward of this session's guidance skipped ``block`` (STG-R)."""
        self.skipped_blocks.add(block)

    def selection_context(self, layout: TokenLayout) -> SelectionContext:
        return SelectionContext(layout, self.words)

    def applied_rules(self) -> set[int]:
        """Indices (in ``rules``) of the rules that applied at least once."""
        return set(self._hits)

    def on_call(self, state: ForwardState, layer: LayerInfo, applied: list[Rule], mass: torch.Tensor | None) -> None:
        self.calls += 1
        backend = dispatch_routing.current_backend()
        self.backends[backend] = self.backends.get(backend, 0) + 1
        ran = self.routes.setdefault(backend, {})
        how = backend_calls.how()
        ran[how] = ran.get(how, 0) + 1
        for rule in applied:
            hits = self._hits.setdefault(self._index[id(rule)], {"steps": set(), "layers": set(), "branches": set()})
            if state.step.step is not None:
                hits["steps"].add(state.step.step)
            hits["layers"].add(layer.qualified)
            hits["branches"].update([rule.branch] if rule.branch != "all" else state.branches or ("unknown",))

    def summary(self) -> dict:
        """JSON-friendly: the rules as given and, per rule, the steps, layers and branches it touched."""
        return {
            "given": [repr(s) for s in self.sources],
            "rules": [
                {
                    "rule": repr(rule),
                    "steps": sorted(self._hits.get(i, {}).get("steps", ())),
                    "layers": sorted(self._hits.get(i, {}).get("layers", ())),
                    "branches": sorted(self._hits.get(i, {}).get("branches", ())),
                }
                for i, rule in enumerate(self.rules)
            ],
            "attention_calls_steered": self.calls,
            "blocks_skipped": sorted(self.skipped_blocks),
            "steered_calls_by_backend": dict(sorted(self.backends.items())),  # "sdpa": calls made without the dispatcher
            # per backend, how many of its steered calls its own kernel ("backend") or attnsteer's ("attnsteer") computed
            "steered_calls_by_route": {b: dict(sorted(r.items())) for b, r in sorted(self.routes.items())},
        }

    def __repr__(self) -> str:
        return f"Steering({', '.join(repr(s) for s in self.sources)})"


def check_batch_item(batch_item: Any) -> tuple[int, int] | None:
    """``batch_item=(index, count)``: this session applies to the index-th of ``count`` items batched in one
    pipeline call (see :mod:`attnsteer.sweeps.batched`); validated, or None."""
    if batch_item is None:
        return None
    ok = (isinstance(batch_item, tuple) and len(batch_item) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in batch_item)
          and 0 <= batch_item[0] < batch_item[1])
    if not ok:
        raise ConfigError(f"batch_item must be (index, count) with 0 <= index < count, got {batch_item!r}")
    return batch_item


def steer(
    target: Any,
    *rules_or_recipes: Rule | Recipe | Iterable[Rule],
    adapter: Adapter | None = None,
    num_steps: int | None = None,
    prompt: str | None = None,
    tokenizer: Any = None,
    strict: bool = False,
    batch_item: tuple[int, int] | None = None,
) -> Session:
    """Apply rules to ``target``'s self-attention inside a ``with`` block; yields a :class:`Steering`.

    ``num_steps`` gives the step count when the target is a bare transformer (for ``at.progress``);
    ``prompt`` (tokenised with ``tokenizer`` or the pipeline's) lets ``at.words(...)`` find its tokens.
    A rule that cannot apply (a layer filter matching no module) or never applied during the run is
    reported as an :class:`~attnsteer.errors.AttnsteerWarning`; ``strict=True`` raises instead.
    ``batch_item=(i, n)`` restricts the rules to the rows of the i-th of n items batched in one call.
    """
    sources = tuple(rules_or_recipes)
    rules = flatten_rules(sources)
    client = Steering(rules, sources, word_index(target, rules, prompt, tokenizer), guidance_of(sources))
    client.batch_item = check_batch_item(batch_item)
    client.initial_noise = initial_noise_of(sources)
    if client.batch_item is not None:
        _refuse_unbatchable(rules, client.guidance)
        if client.initial_noise is not None:
            raise SteeringError(f"at.steer(batch_item=...): {client.initial_noise!r} changes the whole batch's initial "
                                "latents; run it sequentially")
    return Session(target, client, adapter=adapter, num_steps=num_steps, strict=strict)


def inspect(
    target: Any,
    heads: bool = False,
    queries: Any = None,
    *,
    adapter: Adapter | None = None,
    num_steps: int | None = None,
    strict: bool = False,
    maps: Any = None,
    map_steps: Any = 5,
    map_layers: Any = "all",
    map_max_mb: float = 100.0,
    prompt: str | None = None,
    tokenizer: Any = None,
    batch_item: tuple[int, int] | None = None,
) -> Session:
    """Record frame-level attention of ``target`` inside a ``with`` block; yields a :class:`~attnsteer.inspection.record.Record`.

    ``heads=True`` keeps one map per head; ``queries`` (a selector, default ``at.frames.generated``)
    picks the query frames that ``reference_mass`` averages over. Combines with ``at.steer``. A
    model that ran without any recorded attention call is reported (``strict=True``: raises).
    ``maps`` (``at.maps.onto(...)``, ``at.maps.region(...)``, ``at.maps.received(...)``) also keeps
    spatial maps, as ``rec.maps``, binned by ``map_steps`` and ``map_layers`` (see :mod:`attnsteer.inspection.maps`)
    and refused beyond ``map_max_mb``; ``prompt`` (and ``tokenizer``) resolve ``at.words`` in them.
    """
    from .inspection.map_recording import MapRecording
    from .inspection.record import Record

    record = Record(heads=heads, queries=queries)
    record.metadata["model"] = _describe_target(target)
    record.batch_item = check_batch_item(batch_item)
    if maps is not None and record.batch_item is not None:
        raise ConfigError("at.inspect(maps=..., batch_item=...): spatial maps are not recorded per batch item; "
                          "record them in a run of their own")
    if maps is not None:
        specs = check_maps(maps)
        record.maps = MapRecording(specs, map_steps, map_layers, word_index(target, specs, prompt, tokenizer),
                                   map_max_mb)
    return Session(target, record, adapter=adapter, num_steps=num_steps, strict=strict)


def _refuse_unbatchable(rules: tuple[Rule, ...], guidance: PerturbedGuidance | None) -> None:
    """What a batch share cannot restrict to its rows: output rules and perturbed guidance act on whole forwards."""
    if guidance is not None:
        raise SteeringError("at.steer(batch_item=...): perturbed guidance adds a forward over the whole batch, so "
                            "it cannot be restricted to one batch item; run it sequentially")
    outputs = [r for r in rules if r.transform.kind == "output"]
    if outputs:
        raise SteeringError(f"at.steer(batch_item=...): {outputs[0]!r} edits the module output, which is not "
                            "restricted to one batch item; run it sequentially")


def _check_maps_before_run(controllers: list[Controller]) -> None:
    """Refuse before the run what spatial maps cannot record: a rule on the score path (score functions,
    identity attention, elementwise pairs) in a layer whose every step the maps record; and tell each map
    recording how many self-attention layers it may bin (its ``map_max_mb`` is checked at the first call)."""
    from .language.outputs import OutputTransform
    from .language.transforms import QueryBias, Transform

    def scored(rule: Rule) -> bool:
        t = rule.transform
        if rule.attention != "self" or isinstance(t, OutputTransform):
            return False
        grouped = t.constant_bias is not None or isinstance(t, QueryBias) or type(t).call_scale is not Transform.call_scale
        return not grouped or (rule.pairs is not None and rule.pairs.elementwise)

    for controller in controllers:
        maps = [c.maps for c in controller.clients if getattr(c, "maps", None) is not None]
        layers = [layer for kind, layer in controller.layers if kind == "self"]
        for m in maps:
            m.expected_layers = max(getattr(m, "expected_layers", 0), len(layers))
        every_step = [m for m in maps if isinstance(m.step_bins.spec, (str, int))
                      and any(spec.attention == "self" for spec in m.specs)]
        rules = [r for c in controller.clients if isinstance(c, Steering) for r in c.rules if scored(r)]
        for rule in rules:
            hit = [layer for layer in layers if rule.matches_layer(layer.index, layer.names, layer.model)
                   and any(m.layer_bins.label(layer.index, layer.qualified) is not None for m in every_step)]
            if hit:
                raise SteeringError(
                    f"rule {rule!r} in module {hit[0].qualified!r}: spatial maps need rules that are constant per pair "
                    "of token sets (the grouped kernel); this rule changes logits elementwise (the score path), which "
                    "gives no per-query log-sum-exp: record the maps without it (refused before the run)"
                )


def _describe_target(target: Any) -> str:
    return type(target).__name__
