"""How the gateway's modules and folders depend on each other, read from their source (no
import is run).

Every import counts: at module level, inside functions and under `TYPE_CHECKING`, since each
one is a dependency a reader has to follow. A folder (with its subfolders) is one unit: two
folders whose modules import each other's are one layer in two places.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gateway"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The gateway modules `path` imports (`from pkg import mod` counts as importing `pkg.mod`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(path, set(paths)) for name, path in paths.items()}


def unit_of(module: str) -> str:
    """The folder right under `gateway/` that holds `module` (subfolders included), or the module
    itself when it sits in `gateway/`."""
    return ".".join(module.split(".")[:2])


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between units (`unit_of`), imports within a unit left out."""
    units: dict[str, set[str]] = {}
    for module, deps in graph.items():
        unit = unit_of(module)
        units.setdefault(unit, set()).update(dep for d in deps if (dep := unit_of(d)) != unit)
    return units


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


pytestmark = pytest.mark.unit


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "gateway.runner.runs" in graph["gateway.runtime"]
    assert "gateway.store.base" in graph["gateway.demo"]


def test_no_import_cycle_in_gateway() -> None:
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_no_import_cycle_between_folders() -> None:
    units = folder_graph(import_graph())
    assert find_cycle(units) is None, " -> ".join(find_cycle(units) or [])


def test_folder_graph_sees_a_cycle_through_subfolders() -> None:
    graph = {"gateway.a.x": {"gateway.b.y"}, "gateway.b.y": set(), "gateway.b.deep.z": {"gateway.a.x"},
             "gateway.top": {"gateway.a.x"}}
    assert folder_graph(graph) == {"gateway.a": {"gateway.b"}, "gateway.b": {"gateway.a"},
                                   "gateway.top": {"gateway.a"}}
    assert find_cycle(folder_graph(graph)) == ["gateway.a", "gateway.b", "gateway.a"]


FOLDERS = ("gateway.api", "gateway.k8s", "gateway.runner", "gateway.transports", "gateway.ds", "gateway.stream",
           "gateway.sessions", "gateway.store", "gateway.client")
"""The folders from the top of docs/architecture.md's table down."""


def test_every_folder_is_placed() -> None:
    assert set(FOLDERS) == {unit_of(module_name(p)) for p in ROOT.glob("*/__init__.py")}


def test_folders_import_only_folders_below_them() -> None:
    """A lower folder never imports a higher one, whatever module of it does."""
    units = folder_graph(import_graph())
    wrong = sorted(f"{folder} -> {dep}" for i, folder in enumerate(FOLDERS)
                   for dep in units.get(folder, ()) if dep in FOLDERS[: i + 1])
    assert not wrong


def test_find_cycle_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(("lower", "upper"), [
    ("gateway.transports", "gateway.api"),
    ("gateway.transports", "gateway.runtime"),
    ("gateway.stream", "gateway.transports"),
    ("gateway.stream", "gateway.api"),
    ("gateway.store", "gateway.stream"),
    ("gateway.runner", "gateway.runtime"),
    ("gateway.runner", "gateway.api"),
    ("gateway.sessions", "gateway.runner"),
    ("gateway.client", "gateway.store"),
])
def test_dependencies_point_one_way(lower: str, upper: str) -> None:
    """A lower layer never reaches up: `upper` may import `lower`, not the other way round."""
    wrong = sorted(f"{mod} -> {dep}" for mod, deps in import_graph().items() if mod.startswith(lower + ".")
                   for dep in deps if dep == upper or dep.startswith(upper + "."))
    assert not wrong


TOP = ("gateway.api.", "gateway.app", "gateway.compat", "gateway.server", "gateway.workers", "gateway.cli")


def test_only_the_top_layer_sees_the_whole_gateway() -> None:
    """Below the handlers, parts get the context they need (`StreamContext`, a settings slice)."""
    wrong = sorted(mod for mod, deps in import_graph().items()
                   if "gateway.runtime" in deps and not mod.startswith(TOP))
    assert not wrong


MAX_LINES = 400


def test_no_module_is_over_400_lines() -> None:
    sizes = {str(p.relative_to(ROOT.parent)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
