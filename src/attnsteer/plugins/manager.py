"""The pluggy plugin manager: built-in adapters plus third-party ones from the ``attnsteer`` entry points."""

from __future__ import annotations

import functools

import pluggy
import torch

from ..errors import UnsupportedModelError
from . import hookspecs
from .base import Adapter

BUILTIN_PLUGINS = ("attnsteer.plugins.wan", "attnsteer.plugins.cogvideox", "attnsteer.plugins.ltx",
                   "attnsteer.plugins.hunyuan", "attnsteer.plugins.svd")


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    import importlib

    pm = pluggy.PluginManager("attnsteer")
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    pm.load_setuptools_entrypoints("attnsteer")
    return pm


def find_adapter(model: torch.nn.Module) -> Adapter | None:
    """The adapter of the first plugin that recognises ``model``, or None."""
    return plugin_manager().hook.attnsteer_adapter(model=model)


def supported_families() -> list[str]:
    """Names of the registered plugins, for error messages."""
    return sorted(name.rsplit(".", 1)[-1] for name, _ in plugin_manager().list_name_plugin())


def require_adapter(model: torch.nn.Module) -> Adapter:
    adapter = find_adapter(model)
    if adapter is None:
        raise UnsupportedModelError(
            f"unsupported model: no adapter recognises {type(model).__name__}; supported families: "
            f"{', '.join(supported_families())}. Pass a diffusers pipeline or transformer of a supported family, "
            "or give a layout with at.GenericAdapter."
        )
    return adapter
