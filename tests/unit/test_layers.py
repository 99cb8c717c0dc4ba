"""The import graph of src/openhart: layers that only point down, no import circle, and imports at
the top of modules except the few lazy third-party ones that say why (the README's layout section
lists the layers)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "openhart"

# Lowest first. A module belongs to the first layer with an entry that is the module or one of its
# packages ("" is the package `openhart` itself); it may import its own layer and those below.
LAYERS = [
    ("foundation", ["version", "seeding", "timing", "device", "allocator", "inputs", "outputs", "serialization",
                    "images", "blocks", "kernels", "attention", "text.positions"]),
    ("configuration", ["config", "metadata"]),
    ("networks", ["tokenizer", "transformer", "diffusion", "hart_model", "text", "lora", "metrics"]),
    ("folder layouts", ["layout", "convert.official", "default_model"]),
    ("loading", ["loading"]),
    ("model resolution", ["hub"]),
    ("conversion", ["convert"]),
    ("generation", ["sampling", "editing", "pipeline", "benchmark"]),
    ("data", ["data"]),
    ("training", ["train"]),
    ("evaluation", ["eval"]),
    ("web UI", ["web"]),
    ("command line", ["commands", "cli", "__main__", ""]),
]
LAZY_REASON = "# lazy:"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name below `openhart` ("" for the package itself) -> (file, is a package)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)
    return modules


MODULES = _modules()


def _target(module: str, package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The openhart modules an import statement names (a package's attribute that is a module
    counts as that module)."""
    if isinstance(node, ast.Import):
        return [a.name.removeprefix("openhart").lstrip(".") for a in node.names
                if a.name == "openhart" or a.name.startswith("openhart.")]
    if node.level == 0:
        if not (node.module == "openhart" or (node.module or "").startswith("openhart.")):
            return []
        base = node.module.removeprefix("openhart").lstrip(".")
    else:
        parts = module.split(".") if module else []
        if not package:
            parts = parts[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    names = [f"{base}.{a.name}" if base else a.name for a in node.names]
    return [name if name in MODULES else base for name in names]


def _imports() -> list[tuple[str, str, bool, ast.stmt, list[str]]]:
    """(module, imported module or '' for third party, inside a function, node, source lines)."""
    found = []
    for module, (path, package) in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            targets = _target(module, package, node)
            for target in targets or [None]:
                found.append((module, target, id(node) in nested, node, lines))
    return found


IMPORTS = _imports()


def layer_of(module: str) -> int:
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if module == entry or (entry and module.startswith(entry + ".")):
                return index
    raise AssertionError(f"openhart.{module} is in no layer: add it to LAYERS in {__file__}")


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_layers_only_point_down():
    upward = []
    for module, target, _, node, _ in IMPORTS:
        if target is None or target == module:
            continue
        if layer_of(target) > layer_of(module):
            upward.append(f"openhart.{module} ({LAYERS[layer_of(module)][0]}, line {node.lineno}) imports "
                          f"openhart.{target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = {module: set() for module in MODULES}
    for module, target, _, _, _ in IMPORTS:
        if target is not None and target != module:
            graph[module].add(target)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def _reason_above(lines: list[str], index: int) -> bool:
    """Whether the comment above the group of import lines that holds line `index` is a reason."""
    while index > 0 and lines[index - 1].strip().startswith(("import ", "from ")):
        index -= 1
    return index > 0 and lines[index - 1].strip().startswith(LAZY_REASON)


def test_imports_are_at_the_top():
    """openhart's own modules are imported at the top of each module; a third-party import inside
    a function says why on the line above (`# lazy: ...`): a heavy or platform-specific package."""
    bad = []
    for module, target, nested, node, lines in IMPORTS:
        if not nested:
            continue
        where = f"{SRC.name}/{module.replace('.', '/') or '__init__'}.py:{node.lineno}"
        if target is not None:
            bad.append(f"{where}: imports openhart.{target} inside a function; move it to the top")
        elif not _reason_above(lines, node.lineno - 1):
            bad.append(f"{where}: a third-party import inside a function without a `{LAZY_REASON}` reason above it")
    assert not bad, "\n".join(bad)


def test_the_graph_is_read_from_the_code():
    """The checks above see real edges: a known downward import and a known lazy one."""
    edges = {(m, t) for m, t, _, _, _ in IMPORTS}
    assert ("loading", "layout") in edges and ("pipeline", "hub") in edges
    assert ("commands.serve", "web.app") in edges
    assert any(m == "web.app" and t is None and n for m, t, n, _, _ in IMPORTS)
    assert layer_of("convert.official") < layer_of("loading") < layer_of("hub") < layer_of("convert.checkpoint")
    assert layer_of("train.trainer") < layer_of("eval.report")
