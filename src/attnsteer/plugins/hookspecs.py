"""The plugin hooks an adapter package implements (pluggy project name ``attnsteer``)."""

from __future__ import annotations

import pluggy
import torch

hookspec = pluggy.HookspecMarker("attnsteer")
hookimpl = pluggy.HookimplMarker("attnsteer")


@hookspec(firstresult=True)
def attnsteer_adapter(model: torch.nn.Module):  # -> Adapter | None
    """Return an :class:`~attnsteer.plugins.base.Adapter` for ``model`` if this plugin knows its family, else None."""
