"""The layout rules of docs/design.md §2, checked on the source: one-way imports, small files, short functions.

    benchmarks  ->  rag.cli  ->  library (rag, finetune)  ->  sample_corpus  ->  ground floor

The ground floor (`rag.text`, `rag.reporting`, `rag.corpus`) imports no other project module;
`finetune` imports `rag`, never the reverse (only the command line, `rag.cli`, reaches into
training); nothing below the command line imports it. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("rag", "finetune", "sample_corpus")
GROUND_FLOOR = {"rag.text", "rag.reporting", "rag.corpus", "rag.atomic"}
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    files += list((REPO / "benchmarks").glob("*.py"))
    return {_module_name(p): p for p in sorted(files)}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports, anywhere in the file (a package import names its __init__)."""
    found: set[str] = set()
    module = _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    sources = _sources()
    return {name: _imports(path, set(sources)) for name, path in sources.items()}


def _layer(module: str) -> str:
    if module in GROUND_FLOOR:
        return "ground"
    if module.startswith("benchmarks"):
        return "benchmarks"
    if module == "rag.cli" or module.startswith("rag.cli."):
        return "cli"
    if module.startswith("sample_corpus"):
        return "sample"
    return "finetune" if module.startswith("finetune") else "rag"


# layer -> the layers it may import
ALLOWED = {"ground": {"ground"}, "sample": {"sample", "ground"}, "rag": {"rag", "sample", "ground"},
           "finetune": {"finetune", "rag", "sample", "ground"},
           "cli": {"cli", "finetune", "rag", "sample", "ground"},
           "benchmarks": {"benchmarks", "finetune", "rag", "sample", "ground"}}


def test_imports_only_go_down(graph):
    wrong = sorted(f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
                   for module, targets in graph.items() for target in targets
                   if _layer(target) not in ALLOWED[_layer(module)])
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph):
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            # a package's __init__ is imported on the way to its modules; only real edges count
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_files_and_functions_stay_small():
    too_long = []
    paths = list(_sources().values()) + sorted((REPO / "tests").rglob("*.py"))
    for path in paths:
        source = path.read_text(encoding="utf-8")
        rel = path.relative_to(REPO)
        lines = source.count("\n")
        if lines > MAX_FILE_LINES:
            too_long.append(f"{rel}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1 + len(node.decorator_list)
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}() has {length} lines")
    assert not too_long, "\n".join(too_long)
