"""Finding a model's adapter: a pluggy plugin manager over the built-in adapters (every module under
``attnsteer/plugins/``, loaded by name as pytest loads its built-in plugins) and third-party ones from the ``attnsteer`` entry-point group.

An entry point names a module or an :class:`Adapter` class. A module's adapters are the Adapter
subclasses it defines that declare ``model_classes``; each becomes a pluggy plugin answering
``attnsteer_adapter`` for models of those classes, so no hook function is written. A module may
also hold hand-written ``@hookimpl def attnsteer_adapter(model)`` functions (matching by anything
else than class names). Plugins registered later are asked first: third-party before built-in.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil
import warnings
import weakref
from types import ModuleType
from typing import Any

import pluggy
import torch

from ..errors import AttnsteerWarning, ConfigError, UnsupportedModelError
from . import hookspecs
from .adapter import Adapter
from .hookspecs import hookimpl

ENTRY_POINT_GROUP = "attnsteer"


class AdapterPlugin:
    """The pluggy plugin of one declarative adapter class: a fresh adapter for each model of its classes."""

    def __init__(self, adapter_class: type[Adapter]) -> None:
        self.adapter_class = adapter_class

    @hookimpl
    def attnsteer_adapter(self, model: torch.nn.Module) -> Adapter | None:
        return self.adapter_class() if self.adapter_class.matches(model) else None


def declared_adapters(module: ModuleType) -> list[type[Adapter]]:
    """The adapter classes ``module`` defines (not those it imports) that declare model classes."""
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Adapter) and obj.__module__ == module.__name__
            and obj.model_classes]


def register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register an Adapter class, or a module (its declared adapters and its hand-written hook functions)."""
    if isinstance(plugin, type) and issubclass(plugin, Adapter):
        if plugin.layout is Adapter.layout and not plugin.refusal:
            raise ConfigError(f"adapter {plugin.__name__} defines no layout(model, inputs)")
        pm.register(AdapterPlugin(plugin), name=f"{name}:{plugin.__name__}")
        return
    if isinstance(plugin, ModuleType):
        for cls in declared_adapters(plugin):
            register(pm, cls, plugin.__name__)
    pm.register(plugin, name=name)
    check_hooks(pm, plugin, name)


def check_hooks(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """pluggy's ``check_pending()`` after registering ``plugin``: a ``@hookimpl`` whose name is no attnsteer hook
    (a misspelled ``attnsteer_adapter``) would otherwise register silently and never be asked. Raises ConfigError
    naming the hook, the plugin and the hooks there are; the plugin is left unregistered."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        hooks = sorted(n for n in vars(hookspecs) if n.startswith("attnsteer_"))
        raise ConfigError(f"plugin {name}: {exc}; attnsteer's hooks are {hooks} (check the spelling)") from None


def register_third_party(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """:func:`register` for an entry point's plugin: one that cannot be registered is reported once, by
    name (an :class:`AttnsteerWarning`), and left out whole, so the built-in adapters keep working."""
    before = set(pm.get_plugins())
    try:
        register(pm, plugin, name)
    except Exception as exc:
        for partial in set(pm.get_plugins()) - before:
            pm.unregister(partial)
        broken_plugin(ENTRY_POINT_GROUP, name, exc)


def broken_plugin(group: str, name: str, exc: BaseException) -> None:
    """Report a third-party plugin that is left out: once, naming its entry point and the reason."""
    warnings.warn(f"the {group!r} entry point {name} is left out: {type(exc).__name__}: {exc}",
                  AttnsteerWarning, stacklevel=3)


BUILTIN_PACKAGE = "attnsteer.plugins"  # loaded by name: the adapters sit above this contract


def builtin_modules() -> list[ModuleType]:
    """Every module of the ``attnsteer.plugins`` package, in name order."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    return [importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}") for info in pkgutil.iter_modules(package.__path__)]


def entry_point_plugins(group: str = ENTRY_POINT_GROUP) -> list[tuple[str, object]]:
    """(name, loaded object) of each entry point of ``group``; one that fails to load is reported (a warning
    naming it) and left out."""
    found = []
    for ep in importlib.metadata.entry_points(group=group):
        try:
            found.append((f"{ep.name} = {ep.value}", ep.load()))
        except Exception as exc:
            broken_plugin(group, f"{ep.name} = {ep.value}", exc)
    return found


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use (``plugin_manager.cache_clear()`` rebuilds it)."""
    pm = pluggy.PluginManager("attnsteer")
    pm.add_hookspecs(hookspecs)
    for module in builtin_modules():
        register(pm, module, module.__name__)
    for name, plugin in entry_point_plugins():
        register_third_party(pm, plugin, name)
    return pm


def registered_adapters() -> list[type[Adapter]]:
    """The declarative adapter classes, built-in first, in registration order."""
    return [p.adapter_class for _, p in plugin_manager().list_name_plugin() if isinstance(p, AdapterPlugin)]


_BY_INSTANCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> Adapter, from register_adapter
_BY_CLASS: dict[type, Adapter] = {}  # model class -> Adapter, from register_adapter


def register_adapter(model_or_class: torch.nn.Module | type, adapter: Adapter | None) -> None:
    """Remember ``adapter`` for one model (held weakly) or for every instance of a model class (subclasses too), so
    that later ``at.steer`` / ``at.inspect`` calls find it without ``adapter=``; ``adapter=None`` forgets it."""
    if adapter is not None and not isinstance(adapter, Adapter):
        raise ConfigError(f"register_adapter(adapter=...) must be an at.Adapter (e.g. at.GenericAdapter(...)) or None, "
                          f"got {type(adapter).__name__}")
    if isinstance(model_or_class, type) and issubclass(model_or_class, torch.nn.Module):
        table: Any = _BY_CLASS
    elif isinstance(model_or_class, torch.nn.Module):
        table = _BY_INSTANCE
    else:
        raise ConfigError(f"register_adapter(model_or_class=...) must be a torch.nn.Module or a subclass of it, got "
                          f"{model_or_class!r}")
    if adapter is None:
        table.pop(model_or_class, None)
    else:
        table[model_or_class] = adapter


def registered_adapter(model: torch.nn.Module) -> Adapter | None:
    """The adapter :func:`register_adapter` gave for ``model`` or for the nearest class of its MRO, else None."""
    found = _BY_INSTANCE.get(model)
    if found is not None:
        return found
    for cls in type(model).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    return None


def find_adapter(model: torch.nn.Module) -> Adapter | None:
    """The adapter registered for ``model`` (:func:`register_adapter`), else that of the first plugin that recognises
    it, or None; a refused family raises with its reason."""
    registered = registered_adapter(model)
    if registered is not None:
        return registered
    adapter = plugin_manager().hook.attnsteer_adapter(model=model)
    if adapter is not None and adapter.refusal:
        raise UnsupportedModelError(
            f"{type(model).__name__} ({adapter.family}) cannot be steered or inspected exactly: {adapter.refusal}"
        )
    return adapter


def supported_families() -> list[str]:
    """Families of the registered adapters and names of other plugins, for error messages."""
    families = {cls.family for cls in registered_adapters() if not cls.refusal}
    hand_written = {name.rsplit(".", 1)[-1] for name, p in plugin_manager().list_name_plugin()
                    if not isinstance(p, AdapterPlugin) and plugin_manager().get_hookcallers(p)}
    return sorted(families | hand_written)


def require_adapter(model: torch.nn.Module) -> Adapter:
    """The adapter of ``model``; raises naming the supported families when none recognises it."""
    adapter = find_adapter(model)
    if adapter is None:
        raise UnsupportedModelError(
            f"unsupported model: no adapter recognises {type(model).__name__}; supported families: "
            f"{', '.join(supported_families())}. Pass a diffusers pipeline or transformer of a supported family, "
            "or describe it with at.GenericAdapter(...) and pass adapter= or at.register_adapter(model, adapter) "
            "(docs/extending.md: 'Steering a model that is not a diffusers pipeline')."
        )
    return adapter
