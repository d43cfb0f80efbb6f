r"""Recipes declared once: ``@recipe`` registers a function that returns an :class:`attnsteer.Recipe`,
with typed, validated parameters and a one-line description.

::

    from attnsteer.language.recipe import recipe

    @recipe(help={"gamma": "logit bias is -gamma: > 0 more motion, < 0 less"}, choices={"branch": ("cond", "all")})
    def dymos(gamma: float = 0.6, until_step: int | None = None, branch: str = "cond") -> at.Recipe:
        # docstring summary: the description, e.g. "DyMoS: weaken generated frames' attention to the reference"
        ...

- Every parameter is annotated ``float``, ``int``, ``bool``, ``str`` or ``torch.Tensor`` (Python only),
  optionally ``| None``; one
  without a default is required. Other annotations raise ``ConfigError`` at decoration.
- Calling the recipe checks each argument's type (and ``choices``) before the function runs, so a
  bad value raises ``ConfigError`` naming ``recipe(param=...)``; range checks stay in the function.
- The docstring's first paragraph (its summary sentence) is the description (``attnsteer recipes`` prints it).
- The decorated function is registered under its name (or ``name=``) when its module is imported.
  Built-in recipes live in ``attnsteer.recipes``; third-party ones register through the
  ``attnsteer.recipes`` entry-point group (an entry point names a recipe or a module of recipes).
- The CLI runs any of them: ``attnsteer run --recipe NAME --param key=value``, each value parsed
  by the parameter's type (``true``/``false`` for bools, ``none`` for an optional number).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch

from ..errors import AttnsteerWarning, ConfigError
from ..validation import integer, real_number
from .rules import Recipe

ENTRY_POINT_GROUP = "attnsteer.recipes"
KINDS: dict[type, str] = {float: "a real number", int: "an int", bool: "true or false", str: "a string",
                          torch.Tensor: "a tensor (from Python only)"}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
REQUIRED = inspect.Parameter.empty


@attrs.frozen
class RecipeParameter:
    """One typed parameter of a recipe."""

    name: str
    kind: type  # float, int, bool or str
    default: Any = REQUIRED
    optional: bool = False  # None allowed
    choices: tuple | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        return self.kind.__name__ + (" | None" if self.optional else "")

    def check(self, value: Any, recipe: str) -> Any:
        """``value`` unchanged if it has this parameter's type (and is one of its choices), else ConfigError."""
        field = f"{recipe}({self.name}=...)"
        if value is None and self.optional:
            return value
        if self.kind is float:
            real_number(value, field)
        elif self.kind is int:
            integer(value, field)
        elif not isinstance(value, self.kind):
            raise ConfigError(f"{field} must be {KINDS[self.kind]}{' or None' if self.optional else ''}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{field} must be one of {self.choices}, got {value!r}")
        return value

    def parse(self, text: str, recipe: str) -> Any:
        """The value a command-line string stands for, checked."""
        field = f"{recipe}({self.name}=...)"
        lowered = text.strip().lower()
        if self.optional and self.kind is not str and lowered == "none":
            return None
        if self.kind is torch.Tensor:
            raise ConfigError(f"{field} is a tensor: give it from Python, not on the command line")
        try:
            if self.kind is bool:
                if lowered not in TRUE + FALSE:
                    raise ValueError
                value: Any = lowered in TRUE
            else:
                value = self.kind(text)
        except ValueError:
            raise ConfigError(f"{field} must be {KINDS[self.kind]}, got {text!r}") from None
        return self.check(value, recipe)


class RecipeSpec:
    """A declared recipe: call it like the function (arguments are checked first)."""

    def __init__(self, function: Callable[..., Any], name: str, description: str,
                 parameters: tuple[RecipeParameter, ...]) -> None:
        functools.update_wrapper(self, function)
        self.function, self.name, self.description, self.parameters = function, name, description, parameters
        self._signature = inspect.signature(function)

    @property
    def source(self) -> str:
        """"built-in" for the recipes shipped in ``attnsteer.recipes``, else the module that declares it."""
        module = self.function.__module__
        return "built-in" if module == "attnsteer.recipes" or module.startswith("attnsteer.recipes.") else module

    def parameter(self, name: str) -> RecipeParameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise ConfigError(f"recipe {self.name!r} has no parameter {name!r}; its parameters: "
                          f"{', '.join(p.name for p in self.parameters) or 'none'}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"{self.name}(...): {exc}; parameters: {self.signature_text()}") from None
        for name, value in bound.arguments.items():
            self.parameter(name).check(value, self.name)
        made = self.function(*bound.args, **bound.kwargs)
        if not isinstance(made, Recipe):  # a None would otherwise run vanilla, silently
            raise ConfigError(f"recipe {self.name!r} ({self.source}) returned {type(made).__name__} {made!r:.80}; "
                              "a recipe function must return an at.Recipe")
        return made

    def signature_text(self) -> str:
        """``gamma: float = 0.6, stop: float = 0.2, ...``"""
        return ", ".join(p.name + ": " + p.type_name + ("" if p.required else f" = {p.default!r}")
                         for p in self.parameters)

    def __repr__(self) -> str:
        return f"<recipe {self.name}({self.signature_text()})>"


_REGISTRY: dict[str, RecipeSpec] = {}


def recipe(function: Callable[..., Any] | None = None, *, name: str | None = None,
           help: Mapping[str, str] | None = None, choices: Mapping[str, tuple] | None = None) -> Any:
    """Declare and register a recipe (usable as ``@recipe`` or ``@recipe(help=..., choices=...)``)."""
    if function is None:
        return functools.partial(recipe, name=name, help=help, choices=choices)
    if isinstance(function, RecipeSpec):
        return function
    spec = _declare(function, name or function.__name__, dict(help or {}), dict(choices or {}))
    _register(spec)
    return spec


def _declare(function: Callable[..., Any], name: str, help: dict[str, str], choices: dict[str, tuple]) -> RecipeSpec:
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    unknown = (set(help) | set(choices)) - set(signature.parameters)
    if unknown:
        raise ConfigError(f"@recipe {name}: help/choices name parameters it does not have: {sorted(unknown)}")
    parameters = []
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigError(f"@recipe {name}: *{p.name} parameters cannot be typed; name each parameter")
        kind, optional = _kind(hints.get(p.name), f"{name}({p.name})")
        allowed = tuple(choices[p.name]) if p.name in choices else None
        parameters.append(RecipeParameter(p.name, kind, p.default, optional, allowed, help.get(p.name, "")))
    doc = (inspect.getdoc(function) or "").strip()
    description = " ".join(doc.split("\n\n")[0].split())
    if not description:
        raise ConfigError(f"@recipe {name}: give the function a docstring; its first paragraph is the description")
    return RecipeSpec(function, name, description, tuple(parameters))


def _kind(annotation: Any, field: str) -> tuple[type, bool]:
    """(float | int | bool | str, whether None is allowed) of a parameter annotation."""
    args = typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if is_union and len(args) == 2 and type(None) in args:
        (kind,) = [a for a in args if a is not type(None)]
        return _kind(kind, field)[0], True
    if annotation in KINDS:
        return annotation, False
    raise ConfigError(f"@recipe {field} must be annotated float, int, bool, str or torch.Tensor (optionally | None), "
                      f"got {annotation!r}")


def _register(spec: RecipeSpec) -> None:
    known = _REGISTRY.get(spec.name)
    same = known is not None and (known.function.__module__, known.function.__qualname__) == (
        spec.function.__module__, spec.function.__qualname__)
    if known is not None and not same:
        raise ConfigError(f"recipe name {spec.name!r} of {spec.function.__module__} is taken by "
                          f"{known.function.__module__}; give one of them another name (@recipe(name=...))")
    _REGISTRY[spec.name] = spec


@functools.lru_cache(maxsize=1)
def _load_entry_points() -> None:
    """Import the third-party recipes once (``_load_entry_points.cache_clear()`` loads them again)."""
    import importlib.metadata
    import warnings

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, (RecipeSpec, types.ModuleType, type)):
                recipe(loaded)  # an entry point may name a plain function: it is declared here
        except Exception as exc:  # a broken third-party recipe is reported once, by name; the rest keeps working
            warnings.warn(f"the {ENTRY_POINT_GROUP!r} entry point {ep.name} = {ep.value} is left out: "
                          f"{type(exc).__name__}: {exc}", AttnsteerWarning, stacklevel=2)


def available_recipes() -> dict[str, RecipeSpec]:
    """Every registered recipe by name: the built-in ones, then third-party ones."""
    importlib.import_module("attnsteer.recipes")
    _load_entry_points()
    return dict(sorted(_REGISTRY.items(), key=lambda item: item[1].source != "built-in"))


def get_recipe(name: str) -> RecipeSpec:
    """The recipe called ``name``; ConfigError listing the others if there is none."""
    found = available_recipes()
    if name not in found:
        import difflib

        close = difflib.get_close_matches(name, list(found), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown recipe {name!r}; {hint}available: {', '.join(found)}")
    return found[name]
