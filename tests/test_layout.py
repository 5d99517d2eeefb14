"""Where code sits says what it is (docs/DESIGN.md: Layout): runtime/ is the inference core and
imports nothing but the standard library, numpy, onnxruntime and Pillow; no module of the package
runs past 500 lines, no function past 80 unless docs/DESIGN.md says why. Reads the source (ast):
imports nothing it checks.
"""

import ast
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT

RUNTIME_IMPORTS = {"numpy", "onnxruntime", "PIL"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# Not the package's code: tests, benchmarks, the scripts that build the shipped models, the JS examples.
OUTSIDE = ("tests", "bench", "models", "examples", "build", "node_modules", "mcdrop.egg-info")
# The optional engines (extras `openvino`, `litert`) are the one exception: each imports its own
# engine, inside a function, only when a file is run on it (docs/DESIGN.md: Layout).
OPTIONAL_ENGINES = {"runtime/openvino_engine.py": "openvino", "runtime/litert_engine.py": "ai_edge_litert"}
# Functions allowed past 80 lines, each for a reason docs/DESIGN.md gives (Layout: long functions).
LONG_FUNCTIONS = {"export/graph.py:mc_function"}


def package_modules():
    return sorted(path for path in ROOT.rglob("*.py")
                  if path.relative_to(ROOT).parts[0] not in OUTSIDE
                  and not any(part.startswith(".") for part in path.relative_to(ROOT).parts))


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported_roots(tree: ast.AST, levels_inside: int):
    """(line, top-level module) of every absolute import anywhere in the module (functions
    included), and of every relative one that climbs more than `levels_inside` levels (out of
    runtime/, shown as its dots and module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module.split(".")[0]
            elif node.level > levels_inside:
                yield node.lineno, "." * node.level + (node.module or "")


def test_runtime_imports_only_the_standard_library_numpy_onnxruntime_and_pillow():
    allowed = set(sys.stdlib_module_names) | RUNTIME_IMPORTS
    found = []
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        levels_inside = len(path.relative_to(ROOT).parts) - 1  # runtime/x.py: 1 (.x); runtime/format/x.py: 2
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {node.lineno for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))}
        for line, root in imported_roots(tree, levels_inside):
            optional = OPTIONAL_ENGINES.get(name(path)) == root and line not in top_level
            if root.startswith(".") or (root not in allowed and not optional):
                found.append(f"{name(path)}:{line} imports {root}")
    assert not found, "runtime/ is the inference core (docs/DESIGN.md: Layout):\n" + "\n".join(found)


def test_the_import_walk_sees_what_it_must_refuse():
    """The check above would pass on a walk that finds nothing: it finds imports inside functions,
    a package other than the allowed ones, and a relative import climbing out of runtime/."""
    code = "import os\ndef f():\n    import pandas\n    from ..export import graph\n    from .errors import X\n"
    assert list(imported_roots(ast.parse(code), 1)) == [(1, "os"), (3, "pandas"), (4, "..export")]


def test_no_module_over_500_lines():
    long = {name(path): n for path in package_modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these along their seams: {long}"


def long_functions():
    for path in package_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    yield f"{name(path)}:{node.name}", lines


def test_no_function_over_80_lines_unless_design_says_why():
    found = dict(long_functions())
    unexplained = {k: v for k, v in found.items() if k not in LONG_FUNCTIONS}
    assert not unexplained, f"split these, or say why in docs/DESIGN.md (Layout) and list them here: {unexplained}"


@pytest.mark.parametrize("function", sorted(LONG_FUNCTIONS))
def test_each_long_function_is_explained_in_design(function):
    path, _, function_name = function.partition(":")
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert f"`{function_name}` ({path})" in design


def test_every_package_folder_is_installed():
    """A package folder missing from pyproject.toml's `packages` works in a checkout and is absent
    once installed."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    folders = sorted(path.parent for path in package_modules() if path.name == "__init__.py" and path.parent != ROOT)
    missing = [f for f in folders if f'"mcdrop.{".".join(f.relative_to(ROOT).parts)}"' not in pyproject]
    assert not missing, missing


METADATA_WRITES = re.compile(r"metadata_props(\[[^\]]*\])?\.(add|append|extend)\(|del [^\n]*metadata_props"
                             r"|metadata_props\s*=|set_model_props\(")


def metadata_writers() -> set:
    return {name(path) for path in package_modules() if METADATA_WRITES.search(path.read_text(encoding="utf-8"))}


def test_one_module_writes_the_metadata():
    """docs/FORMAT.md has one owner: every write of a file's metadata entries goes through
    runtime/format/metadata_writer.py (export, calibrate, convert, quantize call it)."""
    assert metadata_writers() == {"runtime/format/metadata_writer.py"}


def test_the_metadata_pattern_sees_each_way_to_write():
    for code in ("proto.metadata_props.add()", "del proto.metadata_props[:]", "m.metadata_props.append(e)",
                 "onnx.helper.set_model_props(m, {})", "m.metadata_props = []"):
        assert METADATA_WRITES.search(code), code
    assert not METADATA_WRITES.search("for entry in proto.metadata_props: pass")
