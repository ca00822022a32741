"""The package's shape, checked: no import cycles, and no module imports upward.

The data path reads top-down (CLI → service → source/backend → transfer → cache). Imports
are read from the source (any `import` outside `if TYPE_CHECKING:`, at module level or
inside a function), so a lazy import that closes a cycle counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_files() -> dict[str, Path]:
    found = {}
    for folder, package in (
        (ROOT / "registry_client", "registry_client"),
        (ROOT / "backends", "registry_client.backends"),
    ):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        self.found.add(module)
        self.found.update(f"{module}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    files = _module_files()
    graph = {}
    for module, path in files.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[module] = {m for m in visitor.found if m in files and m != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_backends_hold_storage_only() -> None:
    """Storage kinds never reach up into the transfer engine, the cache or the sources."""
    graph = import_graph()
    forbidden = ("registry_client.transfer", "registry_client.cache", "registry_client.sources")
    for module in (m for m in graph if m.startswith("registry_client.backends")):
        bad = sorted(m for m in _reaches(graph, module) if m.startswith(forbidden))
        assert not bad, f"{module} imports {bad}"


def test_lower_layers_never_import_upper_ones() -> None:
    graph = import_graph()
    upper = (
        "registry_client.cli",
        "registry_client.entry",
        "registry_client.service",
        "registry_client.fetch",
        "registry_client.migrate",
        "registry_client.api",
    )
    lower = (
        "registry_client.transfer",
        "registry_client.cache",
        "registry_client.digests",
        "registry_client.locks",
        "registry_client.hits",
        "registry_client.backends",
        "registry_client.sources",
        "registry_client.context",
        "registry_client.config",
    )
    for module in (m for m in graph if m.startswith(lower)):
        bad = sorted(m for m in _reaches(graph, module) if m.startswith(upper))
        assert not bad, f"{module} imports {bad}"


def test_the_acquire_pipeline_is_the_only_publisher() -> None:
    """Images and layers enter the cache through registry_client.acquire alone (it makes
    the temp files, resumes, verifies, publishes); the cache module itself aside."""
    allowed = {"registry_client.acquire", "registry_client.cache"}
    calls = (".publish(", ".publish_blob(", ".temp_file(", ".resume_paths(")
    found = sorted(
        f"{module}: {call}"
        for module, path in _module_files().items()
        if module not in allowed
        for call in calls
        if call in path.read_text(encoding="utf-8")
    )
    assert found == []
