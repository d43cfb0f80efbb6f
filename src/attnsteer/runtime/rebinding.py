"""A function replaced by its router wherever loaded modules bound it, while at least one controller is attached,
and put back after the last (also after an exception): the mechanism behind :mod:`.flash_routing` (flash-attn
called directly) and :mod:`.dispatch_routing` (diffusers' attention dispatcher). Routers carry
``_attnsteer_router = True`` so that a function is never routed twice."""

from __future__ import annotations

import sys
from collections.abc import Callable


class Rebinding:
    """Counts the attached controllers; on the first, replaces every loaded module's binding of each original by
    its router (``routers()``: id -> (original, router)); after the last, puts the originals back."""

    def __init__(self) -> None:
        self.users = 0
        self._patched: list[tuple[dict, str, Callable]] = []  # (namespace, name, original)

    def routers(self) -> dict[int, tuple[Callable, Callable]]:
        """The functions to route now, by id: (original, router)."""
        raise NotImplementedError

    def acquire(self) -> None:
        """A controller attaches: install the routers on the first."""
        if self.users == 0:
            self._install()
        self.users += 1

    def release(self) -> None:
        """A controller detaches: put the originals back after the last."""
        self.users = max(0, self.users - 1)
        if self.users == 0:
            self._restore()

    def _install(self) -> None:
        routed = self.routers()
        if not routed:
            return
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                pair = routed.get(id(value))
                if pair is not None and value is pair[0]:
                    self._patched.append((namespace, name, value))
                    namespace[name] = pair[1]

    def _restore(self) -> None:
        while self._patched:
            namespace, name, original = self._patched.pop()
            if getattr(namespace.get(name), "_attnsteer_router", False):
                namespace[name] = original
