"""Model-relative layer filters: layers named by depth fraction or by the model's family, resolved when a
session attaches (the adapter gives the family, the hooked modules their count).

A recipe cannot know, when it is called, how deep the model it will steer is: ``at.layer_fraction(0.5)`` (the
module at half the depth) and ``at.family_layers({"wan": 2}, otherwise=at.layer_fraction(0.5))`` (the authors'
layer on Wan, the middle module elsewhere) say it relative to the model. They sit in ``Rule(layers=...)`` beside
indices and names, and in ``PerturbedGuidance(skip_blocks=...)`` (then counting the adapter's blocks).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import attrs

from ..errors import ConfigError
from ..validation import integer, real_number

EPS = 1e-9


@attrs.frozen
class ModelDepth:
    """What a model-relative filter reads of one model: its adapter family and how many modules (or blocks) it has."""

    family: str
    count: int


class ModelLayers:
    """A set of layer indices that depends on the model (resolved by :meth:`indices` at attach time)."""

    def indices(self, model: ModelDepth) -> tuple[int, ...]:
        """The indices (in ``range(model.count)``, at least one) this filter picks in ``model``."""
        raise NotImplementedError


def _fraction(value: object, field: str) -> float:
    number = real_number(value, field)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{field} must be a depth fraction in [0, 1], got {value!r}")
    return number


@attrs.frozen(repr=False)
class LayerFraction(ModelLayers):
    """Modules by depth fraction: of ``n``, indices ``floor(start n) <= i < ceil(stop n)`` (at least one, the
    first of them); without ``stop``, the one module ``min(floor(start n), n - 1)``."""

    start: float = attrs.field(converter=lambda v: _fraction(v, "layer_fraction(start=...)"))
    stop: float | None = attrs.field(default=None, converter=lambda v: None if v is None else
                                     _fraction(v, "layer_fraction(stop=...)"))

    def __attrs_post_init__(self) -> None:
        if self.stop is not None and self.stop <= self.start:
            raise ConfigError(f"layer_fraction(start={self.start:g}, stop={self.stop:g}): stop must be > start")

    def indices(self, model: ModelDepth) -> tuple[int, ...]:
        n = model.count
        first = min(math.floor(self.start * n + EPS), n - 1)  # EPS: 1/3 * 30 is 10, not 9.999...
        if self.stop is None:
            return (first,)
        return tuple(range(first, max(min(math.ceil(self.stop * n - EPS), n), first + 1)))

    def __repr__(self) -> str:
        return f"layer_fraction({self.start:g})" if self.stop is None else f"layer_fraction({self.start:g}, {self.stop:g})"


def _table(value: object) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"family_layers(table=...) must be a non-empty mapping from family to layer indices, got {value!r}")
    out = []
    for family, indices in value.items():
        if not isinstance(family, str) or not family:
            raise ConfigError(f"family_layers(table=...) keys must be family names (as adapters spell them), got {family!r}")
        items = (indices,) if isinstance(indices, numbers.Integral) else tuple(indices)
        if not items:
            raise ConfigError(f"family_layers(table=...)[{family!r}] must name at least one layer index")
        out.append((family, tuple(integer(i, f"family_layers(table=...)[{family!r}]", minimum=0) for i in items)))
    return tuple(out)


def _otherwise(value: object) -> ModelLayers:
    if not isinstance(value, ModelLayers):
        raise ConfigError(f"family_layers(otherwise=...) must be a model-relative filter such as "
                          f"at.layer_fraction(0.5), got {value!r}")
    return value


@attrs.frozen(repr=False)
class FamilyLayers(ModelLayers):
    """Per-family layer indices (e.g. a method's authors' layers), and ``otherwise`` for the other families and for
    models of a listed family too shallow to have those indices (a tiny or pruned model)."""

    table: tuple[tuple[str, tuple[int, ...]], ...] = attrs.field(converter=_table)
    otherwise: ModelLayers = attrs.field(factory=lambda: LayerFraction(0.5), converter=_otherwise)

    def indices(self, model: ModelDepth) -> tuple[int, ...]:
        chosen = dict(self.table).get(model.family)
        if chosen is not None and max(chosen) < model.count:
            return chosen
        return self.otherwise.indices(model)

    def __repr__(self) -> str:
        table = ", ".join(f"{f!r}: {list(i)}" for f, i in self.table)
        return f"family_layers({{{table}}}, otherwise={self.otherwise!r})"


def layer_fraction(start: float, stop: float | None = None) -> LayerFraction:
    """Layers by depth fraction, resolved per model: ``layer_fraction(1/3, 2/3)`` is the middle third of the modules,
    ``layer_fraction(0.5)`` the one module at half depth (index ``n // 2`` of ``n``)."""
    return LayerFraction(start, stop)


def family_layers(table: Mapping[str, int | tuple[int, ...]], otherwise: ModelLayers | None = None) -> FamilyLayers:
    """Layer indices per adapter family (``{"wan": 2, "cogvideox": 11}``), ``otherwise`` (default
    ``layer_fraction(0.5)``) for other families and for models too shallow for the listed indices."""
    return FamilyLayers(table) if otherwise is None else FamilyLayers(table, otherwise)
