"""The DESIGN's layering: the package's imports form no cycle, and the pure layers stay pure.

Imports are read from the source (ast), wherever they stand: at module level, under
``if TYPE_CHECKING:`` and inside functions, so a cycle hidden from the interpreter is
found too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import evenergy_async

PACKAGE = "evenergy_async"
ROOT = Path(evenergy_async.__file__).parent


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_names(name: str) -> set[str]:
    """Every module `name` imports: package modules by full name, others by top-level name."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.add(source)
            # `from . import _sansio` imports the submodule, not the package's namespace
            found.update(
                f"{source}.{alias.name}"
                for alias in node.names
                if f"{source}.{alias.name}" in MODULES
            )
    inside = set()
    outside = set()
    for imported in found:
        if imported in MODULES:
            inside.add(imported)
        elif imported.startswith(PACKAGE + "."):
            raise AssertionError(f"{name} imports {imported}, which does not exist")
        elif imported != PACKAGE:
            outside.add(imported.partition(".")[0])
    # `from . import x` in a submodule names its own package: loading the package first is
    # the import system's doing, not a dependency on the package's namespace.
    inside -= {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return inside | outside


GRAPH = {name: imported_names(name) for name in MODULES}


def reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycle() -> list[str] | None:
    """One import cycle among the package's modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for nxt in sorted(GRAPH[name] & MODULES.keys()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(MODULES):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_the_graph_is_read():
    # the reader itself: a few edges every version of the package has
    assert f"{PACKAGE}.errors" in GRAPH[f"{PACKAGE}._sansio"]
    assert f"{PACKAGE}._session" in GRAPH[f"{PACKAGE}.client"]
    assert "aiohttp" in GRAPH[f"{PACKAGE}._session"]
    # under TYPE_CHECKING too
    assert f"{PACKAGE}.client" in GRAPH[PACKAGE]


def test_no_import_cycle():
    assert find_cycle() is None, " -> ".join(find_cycle() or [])


def test_find_cycle_finds_one(monkeypatch):
    monkeypatch.setitem(GRAPH, f"{PACKAGE}.errors", {f"{PACKAGE}.client"})
    cycle = find_cycle()
    assert cycle is not None and cycle[0] == cycle[-1]


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("_ratelimit", {"aiohttp", "cattrs"}),
        ("_seconds", {"aiohttp", "cattrs", "msgspec", "yarl"}),
        ("_sansio", {"aiohttp"}),
        ("errors", {"aiohttp", "cattrs"}),
        ("models", {"aiohttp"}),
        ("refs", {"aiohttp"}),
    ],
)
def test_pure_layers_stay_pure(module, forbidden):
    name = f"{PACKAGE}.{module}"
    imports = reachable(name) | GRAPH[name]
    assert not imports & forbidden, sorted(imports & forbidden)


def test_client_imports_aiohttp_only_for_typing():
    tree = ast.parse(MODULES[f"{PACKAGE}.client"].read_text())
    at_runtime = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(
            (getattr(node, "module", None) or alias.name).startswith("aiohttp")
            for alias in node.names
        )
    ]
    assert at_runtime == []


def test_the_limiter_loads_without_cattrs_or_aiohttp():
    code = (
        "import sys, evenergy_async._ratelimit, evenergy_async._sansio\n"
        "print(sorted({'aiohttp', 'cattrs'} & sys.modules.keys()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
