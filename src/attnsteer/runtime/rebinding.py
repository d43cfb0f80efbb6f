"""A function replaced by its router wherever loaded modules bound it, while at least one controller is attached,
and put back after the last (also after an exception): the mechanism behind :mod:`.flash_routing` (flash-attn
called directly) and :mod:`.dispatch_routing` (diffusers' attention dispatcher). Routers carry
``_attnsteer_router = True`` so that a function is never routed twice."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable


class Rebinding:
    """Counts the attached controllers; on the first, replaces every loaded module's binding of each original by
    its router (``routers()``: id -> (original, router)); after the last, puts the originals back."""

    def __init__(self) -> None:
        self.users = 0
        self._patched: list[tuple[dict, str, Callable]] = []  # (namespace, name, original)
        self._scanned: dict[str, Callable[[], object]] = {}  # module name -> (a weak reference to) the module object
        # whose namespace was read: an id could be a new module's (a stand-in put in sys.modules after the old one
        # was freed) and the new module would go unread
        self._sites: dict[int, list[tuple[dict, str]]] = {}  # id(original) -> where loaded modules bound it
        self._known: set[int] = set()  # the originals the scans looked for
        self._modules: dict[str, object] = {}  # sys.modules as the last scan saw it (a copy: it keeps a module taken
        # out of sys.modules alive until the next scan, whose copy replaces it)

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
        self._scan_new_modules(routed)
        for key, (original, router) in routed.items():
            for namespace, name in self._sites.get(key, ()):
                if namespace.get(name) is original:
                    self._patched.append((namespace, name, original))
                    namespace[name] = router

    def _scan_new_modules(self, routed: dict[int, tuple[Callable, Callable]]) -> None:
        """Find the bindings of the originals in modules loaded since the last scan (a session's start then
        reads only what is new: reading every loaded module each time cost more than a tiny model's run). A new
        original (a flash-attn module loaded later) makes every module be read again."""
        if not set(routed) <= self._known:
            self._scanned.clear()
            self._sites.clear()
            self._modules = {}
            self._known = set(routed)
        if _same_modules(self._modules, sys.modules):  # nothing loaded or replaced since (one C-level comparison)
            return
        self._modules = dict(sys.modules)
        for module_name, module in list(sys.modules.items()):
            seen = self._scanned.get(module_name)
            if seen is not None and seen() is module:
                continue
            self._scanned[module_name] = _reference(module)
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                pair = routed.get(id(value))
                if pair is not None and value is pair[0]:
                    self._sites.setdefault(id(value), []).append((namespace, name))

    def _restore(self) -> None:
        while self._patched:
            namespace, name, original = self._patched.pop()
            if getattr(namespace.get(name), "_attnsteer_router", False):
                namespace[name] = original


def _same_modules(seen: dict[str, object], modules: dict[str, object]) -> bool:
    """Whether ``modules`` holds the same objects under the same names as ``seen`` (dict equality, which takes
    identical values as equal before comparing them; a module object equals only itself). A comparison that fails
    counts as a change."""
    try:
        return bool(seen == modules)
    except Exception:  # an object in sys.modules whose == raises, or sys.modules changed while it was read
        return False


def _reference(module: object) -> Callable[[], object]:
    """A weak reference to ``module``; a strong one for the rare object in ``sys.modules`` that takes no weak reference."""
    try:
        return weakref.ref(module)
    except TypeError:
        return lambda: module
