"""How the gateway's modules depend on each other, read from their source (no import is run).

Every import counts: at module level, inside functions and under `TYPE_CHECKING`, since each
one is a dependency a reader has to follow.
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
