"""The plugin hook (pluggy project name ``attnsteer``): ``attnsteer_adapter(model)``.

Declarative adapters (:class:`~attnsteer.contract.adapter.Adapter` subclasses with ``model_classes``)
answer it without hand-written code; write ``@hookimpl def attnsteer_adapter(model)`` in a plugin
module only to recognise models by something other than their class names.
"""

from __future__ import annotations

import pluggy
import torch

hookspec = pluggy.HookspecMarker("attnsteer")
hookimpl = pluggy.HookimplMarker("attnsteer")


@hookspec(firstresult=True)
def attnsteer_adapter(model: torch.nn.Module):  # -> Adapter | None
    """Return an :class:`~attnsteer.contract.adapter.Adapter` for ``model`` if this plugin knows its family, else None."""
