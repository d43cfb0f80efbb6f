"""The package's architecture, checked: subpackages form layers, no module imports one of a higher layer, and
no import circle exists (function-local imports included; imports under ``if TYPE_CHECKING:`` serve annotations
only, never run, and are left out).

The layer order is stated once, here, bottom to top. A module may import modules of its own layer and of the
layers below it. Plugins are loaded by name (``attnsteer.contract.registry``), not imported, so the adapter
contract stays below the adapters that implement it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import attnsteer

PACKAGE_ROOT = Path(attnsteer.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base: errors and validation of values", ("attnsteer.errors", "attnsteer.validation")),
    ("the rule language", ("attnsteer.language",)),
    ("the attention kernels", ("attnsteer.kernels",)),
    ("the adapter contract", ("attnsteer.contract",)),
    ("the adapters", ("attnsteer.plugins",)),
    ("the runtime", ("attnsteer.runtime",)),
    ("inspection: recordings and maps", ("attnsteer.inspection",)),
    ("sessions: steer and inspect", ("attnsteer.session",)),
    ("figures and video files", ("attnsteer.figures",)),
    ("sweeps: batched, torchrun, the gamma sweep", ("attnsteer.sweeps",)),
    ("the toy model", ("attnsteer.toy",)),
    ("test support", ("attnsteer.testing",)),
    ("the public names", ("attnsteer",)),
    ("the command line", ("attnsteer.cli",)),
]
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The attnsteer modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {m for m in found if m in modules and m != name}


def _is_type_checking(node: ast.AST) -> bool:
    """An ``if TYPE_CHECKING:`` block: imports for annotations only, never executed."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def layer_of(name: str) -> int:
    """Index in LAYERS of the longest prefix that owns ``name``."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{name} belongs to no layer: add it to LAYERS"
    return best


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    for name in all_modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
              for name, targets in sorted(import_graph().items()) for target in sorted(targets)
              if layer_of(target) > layer_of(name)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_layer_order_is_checked_against_real_modules(layer):
    """Every layer named in LAYERS holds at least one module (a renamed package cannot leave a stale entry)."""
    prefixes = dict(LAYERS)[layer]
    assert any(layer_of(name) == [n for n, _ in LAYERS].index(layer) for name in all_modules()), prefixes


def test_no_module_over_the_line_limit_outside_testing():
    long = {name: n for name, path in all_modules().items()
            if not name.startswith("attnsteer.testing") and (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_every_subpackage_says_what_it_holds_and_may_import():
    for init in PACKAGE_ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 15, f"{init.parent.name}/__init__.py needs a paragraph saying what it holds"


def test_no_subpackage_shadows_a_public_name():
    """Importing a subpackage sets an attribute of the package: ``attnsteer.scale`` would replace ``at.scale``."""
    import importlib

    before = {name: getattr(attnsteer, name) for name in attnsteer.__all__}
    for name in sorted(all_modules()):
        if not name.endswith("__main__"):  # running it would start the command line
            importlib.import_module(name)
    changed = [name for name, value in before.items() if getattr(attnsteer, name) is not value]
    assert not changed, f"importing the package's modules replaced the public names {changed}"
