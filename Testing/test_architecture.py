"""The engine's layering, read from its source with ``ast``: the library is import-only (no
module outside ``ixgs_engine/cli`` imports the command line), and its packages import each
other without cycles, so each can be understood and tested from the ones below it."""

import argparse
import ast
import re
from pathlib import Path

import ixgs_engine
from ixgs_engine.cli import build_parser
from ixgs_engine.cli.options import option_names

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


def _is_cli(name: str) -> bool:
    return name in ("ixgs_engine.cli", "ixgs_engine.__main__") or name.startswith("ixgs_engine.cli.")


def _strings(tree: ast.AST, docstrings: bool) -> list[str]:
    """Every string constant of a module (f-strings' literal parts included), with or without
    its docstrings."""
    skipped: set[int] = set()
    if not docstrings:
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                skipped.add(id(body[0].value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped
    ]


def _library_strings(docstrings: bool = True) -> dict[str, list[str]]:
    """The string constants of each library module, i.e. each module outside the command line."""
    return {
        name: _strings(ast.parse(path.read_text(encoding="utf-8")), docstrings)
        for name, path in SOURCES.items()
        if not _is_cli(name)
    }


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
PARAMETER = re.compile(r"(?<!`)`([a-z][a-z0-9_]*)`(?!`)")


def test_the_library_names_no_command_line_flag():
    """Its messages reach Slicer users too: it names its parameters, the CLI words them as flags."""
    flags = {
        name: sorted({f for text in texts for f in FLAG.findall(text)}) for name, texts in _library_strings().items()
    }
    assert {name: found for name, found in flags.items() if found} == {}


def test_every_parameter_a_library_message_names_has_a_command_line_option():
    options = option_names(build_parser(), argparse.Namespace())
    messages = _library_strings(docstrings=False)
    named = {p for texts in messages.values() for text in texts for p in PARAMETER.findall(text)}
    assert named, "the walk must find the parameters the messages name"
    assert sorted(named - options.keys()) == []


def test_the_command_line_words_a_parameter_as_its_own_command_s_option_first():
    parser = build_parser()
    for_evaluate = option_names(parser, parser.parse_args(["evaluate", "run", "--reference", "ct.nrrd"]))
    assert for_evaluate["scan_dir"] == "--scan" and for_evaluate["reference_path"] == "--reference"
    for_reconstruct = option_names(parser, parser.parse_args(["reconstruct", "scan", "-o", "run"]))
    assert for_reconstruct["voxel_size"] == "--voxel-size" and for_reconstruct["resume_iterations"] == "--iterations"
    assert for_reconstruct["holdout_every"] == "--holdout-every"


REPOSITORY = ENGINE.parent
DOCUMENT = re.compile(r"\bdocs/[\w./-]+?\.md\b")


def test_every_document_the_code_and_the_readme_cite_is_in_the_repository():
    cited: dict[str, set[str]] = {}
    sources = [*ENGINE.rglob("*.py"), *REPOSITORY.glob("IXGS*/**/*.py"), REPOSITORY / "README.md"]
    for path in sources:
        for document in DOCUMENT.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(document, set()).add(str(path.relative_to(REPOSITORY)))
    assert "docs/scan-format.md" in cited
    assert {doc: sorted(where) for doc, where in cited.items() if not (REPOSITORY / doc).is_file()} == {}


def _repository_sources() -> list[Path]:
    """The project's Python files: the engine, the Slicer modules, the tests and the benchmarks."""
    folders = [ENGINE, REPOSITORY / "Testing", REPOSITORY / "benchmarks", *REPOSITORY.glob("IXGS*/")]
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


MAX_LINES = 500
MAX_DOCSTRING_LINES = 30


def test_no_source_file_is_over_500_lines_nor_its_docstring_over_30():
    sources = _repository_sources()
    assert len(sources) > 100, "the walk must see the whole project"
    long_files, long_docstrings = {}, {}
    for path in sources:
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES:
            long_files[str(path.relative_to(REPOSITORY))] = text.count("\n")
        docstring = ast.get_docstring(ast.parse(text), clean=False) or ""
        if docstring.count("\n") + 1 > MAX_DOCSTRING_LINES:
            long_docstrings[str(path.relative_to(REPOSITORY))] = docstring.count("\n") + 1
    assert long_files == {} and long_docstrings == {}
