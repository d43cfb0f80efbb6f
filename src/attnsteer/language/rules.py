"""Rules and recipes: declarative attention interventions, pure data validated at construction."""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Iterator
from typing import Union as TypingUnion

import attrs

from ..errors import ConfigError, SteeringError
from .guidance import PerturbedGuidance
from .model_layers import ModelDepth, ModelLayers
from .noise import InitialNoise
from .pairs import Pairs, check_pairs
from .schedules import Schedule, always
from .selectors import AllTokens, Selector, check_selector
from .transforms import Transform

BRANCHES = ("cond", "uncond", "perturbed", "all")
ATTENTION_KINDS = ("self", "cross", "audio", "a2v", "v2a")  # the last three: attention streams (attnsteer.contract.streams)

LayerSpec = TypingUnion[int, str, "re.Pattern[str]", ModelLayers]


def _selector(field: str):
    def convert(value: object) -> Selector:
        return check_selector(value, f"Rule.{field}")

    return convert


def _transform(value: object) -> Transform:
    if not isinstance(value, Transform):
        raise ConfigError(
            "Rule.transform must be a transform: at.bias(x), at.scale(f), at.block(), at.logit_scale(f), "
            "at.temperature(t), at.proportional(n), at.scale_if_positive(a), at.fill(v), at.query_bias(values), "
            f"at.score_mod(fn), at.identity(), at.output_scale(x) or a query transform (at.query_blur(sigma), "
            f"at.query_mean(), at.query_transform(fn)); got {value!r}"
        )
    return value


def _attention(value: object) -> str:
    if value not in ATTENTION_KINDS:
        raise ConfigError(f"Rule.attention must be one of {ATTENTION_KINDS}, got {value!r}")
    return value  # type: ignore[return-value]


def _pairs(value: object) -> Pairs | None:
    return None if value is None else check_pairs(value, "Rule.pairs")


def _schedule(value: object) -> Schedule:
    if not isinstance(value, Schedule):
        raise ConfigError(
            f"Rule.when must be at.steps(...), at.progress(...), at.timesteps(...) or at.always, got {value!r}"
        )
    return value


def _branch(value: object) -> str:
    if value not in BRANCHES:
        raise ConfigError(f"Rule.branch must be one of {BRANCHES}, got {value!r}")
    return value  # type: ignore[return-value]


def _layers(value: object) -> tuple[LayerSpec, ...] | None:
    """None, or a tuple of layer indices, exact names, compiled regexes (a string is tried as both) and
    model-relative filters (``at.layer_fraction``, ``at.family_layers``)."""
    if value is None:
        return None
    kinds = (numbers.Integral, str, re.Pattern, ModelLayers)
    items = _items(value, kinds, "Rule.layers", "layer indices, module names, regexes or at.layer_fraction(...)")
    out: list[LayerSpec] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, kinds):
            raise ConfigError("Rule.layers items must be layer indices, module names, regexes, at.layer_fraction(...) "
                              f"or at.family_layers(...), got {item!r}")
        if isinstance(item, numbers.Integral):
            item = int(item)
        if isinstance(item, int) and item < 0:
            raise ConfigError(f"Rule.layers indices must be >= 0, got {item}")
        if isinstance(item, str):
            try:
                re.compile(item)
            except re.error as exc:
                raise ConfigError(f"Rule.layers entry {item!r} is neither a module name nor a valid regex: {exc}")
        out.append(item)
    if not out:
        raise ConfigError("Rule.layers must not be empty (use None for every layer)")
    return tuple(out)


def _heads(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    items = _items(value, numbers.Integral, "Rule.heads", "head indices >= 0")
    if not items or any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 0 for h in items):
        raise ConfigError(f"Rule.heads must be None or non-empty head indices >= 0, got {value!r}")
    return tuple(sorted({int(h) for h in items}))


def _items(value: object, single: type | tuple[type, ...], field: str, allowed: str) -> list:
    """``value`` as a list: one item of the ``single`` types, or an iterable of items (else ConfigError)."""
    if isinstance(value, single) and not isinstance(value, bool):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigError(f"{field} must be None, one or several {allowed}, got {value!r}") from None


@attrs.frozen
class Rule:
    """Apply ``transform`` to logits from ``query`` tokens to ``key`` tokens, when ``when`` is on.

    ``branch`` picks the guidance branch ("cond", "uncond" or "all"); ``layers`` filters the
    self-attention modules (indices, names or regexes fully matching the module name); ``heads``
    filters heads; ``pairs`` narrows the selected (query, key) pairs by a pair predicate.
    ``attention="cross"`` acts on the separate text cross-attention calls of models that have them
    (Wan's ``attn2``): queries are the video tokens, keys the text tokens (``at.text``, ``at.words``).
    ``attention="audio"``, ``"a2v"``, ``"v2a"`` act on the audio self-attention and the audio-to-video /
    video-to-audio cross-modal calls of joint audio-video models (LTX-2; see :mod:`attnsteer.contract.streams`).
    """

    query: Selector = attrs.field(converter=_selector("query"))
    key: Selector = attrs.field(converter=_selector("key"))
    transform: Transform = attrs.field(converter=_transform)
    when: Schedule = attrs.field(default=always, converter=_schedule)
    branch: str = attrs.field(default="all", converter=_branch)
    layers: tuple[LayerSpec, ...] | None = attrs.field(default=None, converter=_layers)
    heads: tuple[int, ...] | None = attrs.field(default=None, converter=_heads)
    pairs: Pairs | None = attrs.field(default=None, converter=_pairs)
    attention: str = attrs.field(default="self", converter=_attention)

    def __attrs_post_init__(self) -> None:
        self.transform.check_rule(self)
        if self.transform.kind == "identity" and not isinstance(self.key, AllTokens):
            raise ConfigError(f"Rule.key must be at.tokens with at.identity() (a query attends to itself), got {self.key!r}")
        if self.transform.kind == "identity" and self.attention not in ("self", "audio"):
            raise ConfigError("at.identity() needs self-attention (a query attending to itself); got "
                              f"attention={self.attention!r}")

    def matches_layer(self, index: int, names: Iterable[str], model: ModelDepth | None = None) -> bool:
        """Whether this rule covers the layer ``index`` known under ``names``; ``model`` (the family and module
        count) resolves model-relative filters (without it they raise: they cannot be resolved)."""
        if self.layers is None:
            return True
        names = list(names)
        for spec in self.layers:
            if isinstance(spec, ModelLayers):
                if model is None:
                    raise SteeringError(f"Rule.layers {spec!r} is relative to the model: it is resolved with the model's "
                                        "family and module count, which this layer match was not given")
                if index in spec.indices(model):
                    return True
            elif isinstance(spec, int):
                if spec == index:
                    return True
            elif isinstance(spec, re.Pattern):
                if any(spec.fullmatch(n) for n in names):
                    return True
            elif spec in names or any(re.fullmatch(spec, n) for n in names):
                return True
        return False


def _params(value: object) -> tuple[tuple[str, object], ...]:
    return tuple(dict(value).items()) if value is not None else ()  # type: ignore[call-overload]


@attrs.frozen(repr=False)
class Recipe:
    """A named, parameterised group of rules; its repr reads like the call that made it."""

    name: str
    rules: tuple[Rule, ...] = attrs.field(converter=tuple)
    params: tuple[tuple[str, object], ...] = attrs.field(default=(), converter=_params)
    guidance: PerturbedGuidance | None = None  # an extra perturbed prediction (PAG, STG)
    initial_noise: InitialNoise | None = None  # a transform of the pipeline's initial latents (FreeNoise)

    def __attrs_post_init__(self) -> None:
        for r in self.rules:
            if not isinstance(r, Rule):
                raise ConfigError(f"Recipe {self.name!r} rules must be at.Rule objects, got {r!r}")
        if self.guidance is not None and not isinstance(self.guidance, PerturbedGuidance):
            raise ConfigError(f"Recipe {self.name!r} guidance must be a PerturbedGuidance, got {self.guidance!r}")
        if self.initial_noise is not None and not isinstance(self.initial_noise, InitialNoise):
            raise ConfigError(f"Recipe {self.name!r} initial_noise must be an InitialNoise (at.shuffled_noise(...)), "
                              f"got {self.initial_noise!r}")

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __bool__(self) -> bool:
        """Always true: a recipe with no rules (STG-R: only its perturbed guidance) still acts."""
        return True

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.name}({args})"


def guidance_of(items: Iterable[object]) -> PerturbedGuidance | None:
    """The perturbed guidance among the recipes given to at.steer (at most one)."""
    found = [item.guidance for item in items if isinstance(item, Recipe) and item.guidance is not None]
    if len(found) > 1:
        raise ConfigError(f"at.steer takes at most one recipe with perturbed guidance, got {len(found)}")
    return found[0] if found else None


def initial_noise_of(items: Iterable[object]) -> InitialNoise | None:
    """The initial-noise transform among the recipes given to at.steer (at most one)."""
    found = [item.initial_noise for item in items if isinstance(item, Recipe) and item.initial_noise is not None]
    if len(found) > 1:
        raise ConfigError(f"at.steer takes at most one recipe with an initial-noise transform, got {len(found)}")
    return found[0] if found else None


def flatten_rules(items: Iterable[object]) -> tuple[Rule, ...]:
    """Rules from a mix of rules, recipes and iterables of them (what at.steer accepts)."""
    out: list[Rule] = []
    for item in items:
        if isinstance(item, Rule):
            out.append(item)
        elif isinstance(item, Recipe):
            out.extend(item.rules)
        elif isinstance(item, (list, tuple)):
            out.extend(flatten_rules(item))
        else:
            raise ConfigError(f"at.steer takes rules and recipes (at.Rule, at.recipes.dymos(...)), got {item!r}")
    return tuple(out)
