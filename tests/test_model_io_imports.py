"""``trainers/model_io`` imports in one direction: no module imports one that imports it back, and every import goes
from a higher layer to a lower one. Imports inside functions count as much as those at the top of a module."""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

PACKAGE = "trainers.model_io"
FOLDER = ROOT / "trainers" / "model_io"
FACADE = "__init__"

# Lowest first. A module may import only modules of a lower layer.
LAYERS: dict[str, int] = {
    "convert": 0,
    "tokenizer": 0,
    "model_configs": 1,
    "detect": 1,
    "diffusers_folder": 2,
    "reader": 3,
    "components": 4,
    "export": 5,
    "cli": 6,
}
# (importer, what it must never import), said explicitly for readable failures
FORBIDDEN = [
    ("convert", set(LAYERS) - {"convert"}),
    ("tokenizer", set(LAYERS) - {"tokenizer"}),
    ("model_configs", {"reader", "components", "export", "cli"}),
    ("diffusers_folder", {"reader", "components", "export", "cli"}),
    ("reader", {"components", "export", "cli"}),
    ("components", {"export", "cli"}),
    ("export", {"cli"}),
]


def _modules() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.py"))


def _resolve(node: ast.ImportFrom) -> str:
    """The absolute module named by a ``from ... import``, relative levels resolved against the package."""
    if not node.level:
        return node.module or ""
    parts = PACKAGE.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _names(node: ast.AST) -> list[str]:
    """The absolute names an import statement loads: modules, or ``pkg.name`` for ``from pkg import name``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        module = _resolve(node)
        return [module] + [f"{module}.{alias.name}" for alias in node.names]
    return []


def _imported(module: str) -> set[str]:
    """The model_io modules ``module`` imports anywhere in its source (top level, functions, methods);
    ``FACADE`` when it takes a name from the package itself (``from . import read_checkpoint``)."""
    tree = ast.parse((FOLDER / f"{module}.py").read_text(), filename=f"{module}.py")
    known = set(_modules()) - {FACADE}
    found: set[str] = set()
    for node in ast.walk(tree):
        names = _names(node)
        if not names:
            continue
        modules = {n[len(PACKAGE) + 1 :].split(".")[0] for n in names if n.startswith(PACKAGE + ".")} & known
        found |= modules
        if isinstance(node, ast.Import) and PACKAGE in names:
            found.add(FACADE)
        from_facade = isinstance(node, ast.ImportFrom) and names[0] == PACKAGE
        if from_facade and any(alias.name not in known for alias in node.names):
            found.add(FACADE)
    return found


def _graph() -> dict[str, set[str]]:
    """Imports among the model_io modules; importing the package façade counts as importing what it imports."""
    facade = _imported(FACADE) - {FACADE}
    graph = {}
    for module in _modules():
        if module == FACADE:
            continue
        edges = _imported(module)
        if FACADE in edges:
            edges = (edges - {FACADE}) | facade
        graph[module] = edges - {module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path (first module repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walker_sees_function_level_and_relative_imports():
    graph = _graph()
    assert "export" in graph["cli"]  # cli imports export inside run()
    assert "convert" in graph["detect"]  # a module-level relative import


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_model_io_imports_have_no_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle in trainers/model_io: " + " -> ".join(cycle or [])


def test_every_model_io_module_has_a_layer():
    missing = [m for m in _graph() if m not in LAYERS]
    assert not missing, f"add {missing} to LAYERS in this test (where it sits in the import order)"


def test_model_io_imports_go_down_the_layers():
    wrong = [
        f"{module} (layer {LAYERS[module]}) imports {target} (layer {LAYERS[target]})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if module in LAYERS and target in LAYERS and LAYERS[target] >= LAYERS[module]
    ]
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize(("module", "forbidden"), FORBIDDEN, ids=[m for m, _ in FORBIDDEN])
def test_model_io_module_does_not_import_a_higher_layer(module: str, forbidden: set[str]):
    assert module in _graph()
    assert not (_graph()[module] & forbidden), f"{module} imports {sorted(_graph()[module] & forbidden)}"


def test_package_facade_is_not_imported_inside_model_io():
    importers = [m for m in _modules() if m != FACADE and FACADE in _imported(m)]
    assert not importers, f"{importers} import trainers.model_io itself (it imports every module)"


def test_model_io_functions_are_short():
    long = []
    for path in sorted(FOLDER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({size} lines)")
    assert not long, "functions over 60 lines: " + ", ".join(long)
