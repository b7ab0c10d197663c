"""The engine's layering, read from its source with ``ast``: the library is import-only (no
module outside ``ixgs_engine/cli`` imports the command line), and its packages import each
other without cycles, so each can be understood and tested from the ones below it."""

import ast
from pathlib import Path

import ixgs_engine

ENGINE = Path(ixgs_engine.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the ``ixgs_engine`` modules a file imports (at any depth: a function's
    deferred import is still a dependency)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "ixgs_engine" or name.startswith("ixgs_engine.")}


def _package_of(module: str) -> str:
    """The engine package a module belongs to (``ixgs_engine.io.scan`` -> ``io``); top-level
    modules are their own package (``ixgs_engine.simulate`` -> ``simulate``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


SOURCES = {_module_name(p): p for p in sorted(ENGINE.rglob("*.py")) if "__pycache__" not in p.parts}


def test_no_module_outside_the_cli_imports_the_cli():
    offenders = {
        name: sorted(i for i in _imports(path) if i == "ixgs_engine.cli" or i.startswith("ixgs_engine.cli."))
        for name, path in SOURCES.items()
        if not (name == "ixgs_engine.cli" or name.startswith("ixgs_engine.cli.") or name == "ixgs_engine.__main__")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def _package_graph() -> dict[str, set[str]]:
    """Which engine package imports which (``from ixgs_engine import __version__`` names no package)."""
    packages = {_package_of(name) for name in SOURCES} - {""}
    graph: dict[str, set[str]] = {package: set() for package in packages}
    for name, path in SOURCES.items():
        source = _package_of(name)
        if source:
            graph[source].update(({_package_of(i) for i in _imports(path)} & packages) - {source})
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between packages (depth-first search), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_engine_packages_import_each_other_without_cycles():
    graph = _package_graph()
    assert "cli" in graph and "reconstruct" in graph["cli"], "the walk must see the CLI's imports"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_search_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
