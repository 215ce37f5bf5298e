"""The code keeps the shape `docs/design.md` describes: parts that import only the parts
above them, no import cycle, and modules and functions of a size a newcomer can read.

Read from the source with `ast`, so nothing here depends on importing the package.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "keras_bn"

#: The most lines of a module and of a function, docstrings not counted.
MODULE_LINES = 350
FUNCTION_LINES = 60

#: Each part of the package, in the order of docs/design.md, by module-name prefix.
SHARED = ("keras_bn._keras_compat", "keras_bn._checks")
LAYER = ("keras_bn.batch_norm", "keras_bn._layer")
NOTEBOOK = ("keras_bn.notebook",)
EXPERIMENT = ("keras_bn.experiment",)


def _modules():
    """Maps each module's dotted name to its file, for the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _is_package(name):
    return MODULES[name].name == "__init__.py"


def _imports(name, *, top_level_only):
    """The keras_bn modules `name` imports (lazily too, unless `top_level_only`)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    imported = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name if _is_package(name) else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            # `from keras_bn import _graph` imports a module; `from x import name`, a name.
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [target if target in MODULES else base for target in targets]
        else:
            continue
        imported.update(target for target in targets if target in MODULES and target != name)
    return imported


def _part(name, prefixes):
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _code_lines(node, docstrings):
    return len(set(range(node.lineno, node.end_lineno + 1)) - docstrings)


def _docstring_lines(tree):
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def _source_files():
    folders = (PACKAGE, ROOT / "examples", ROOT / "benchmarks", ROOT / "scripts")
    return sorted(path for folder in folders for path in folder.rglob("*.py"))


@pytest.mark.parametrize("path", _source_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_modules_and_functions_stay_readable(path):
    tree = ast.parse(path.read_text())
    docstrings = _docstring_lines(tree)
    module_lines = len(path.read_text().splitlines()) - len(docstrings)
    assert module_lines <= MODULE_LINES, (
        f"{path.relative_to(ROOT)} has {module_lines} lines besides its docstrings; "
        f"the design keeps modules under {MODULE_LINES}: split it by what it does"
    )
    long = {
        node.name: _code_lines(node, docstrings)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and _code_lines(node, docstrings) > FUNCTION_LINES
    }
    assert not long, f"functions over {FUNCTION_LINES} lines in {path.relative_to(ROOT)}: {long}"


def test_the_layer_imports_nothing_but_itself_and_the_shared_modules():
    for name in MODULES:
        if _part(name, LAYER):
            outside = {m for m in _imports(name, top_level_only=False)
                       if not _part(m, LAYER + SHARED) and m != "keras_bn"}
            assert not outside, f"{name} (the layer) imports {sorted(outside)}"


def test_the_notebook_imports_the_layer_and_not_the_tools():
    for name in MODULES:
        if _part(name, NOTEBOOK):
            outside = {m for m in _imports(name, top_level_only=False)
                       if not _part(m, NOTEBOOK + LAYER + SHARED)}
            assert not outside, f"{name} (the notebook) imports {sorted(outside)}"


def test_only_the_harness_imports_the_harness():
    for name in MODULES:
        if not _part(name, EXPERIMENT):
            inside = {m for m in _imports(name, top_level_only=False) if _part(m, EXPERIMENT)}
            assert not inside, f"{name} imports the experiment harness: {sorted(inside)}"


def test_no_import_cycle_at_module_level():
    graph = {name: _imports(name, top_level_only=True) for name in MODULES}
    # Python runs a module's packages before the module; an import of one of them by
    # name (`from keras_bn._graph import inline`) is that, not a cycle.
    graph = {name: {m for m in edges if not name.startswith(m + ".")}
             for name, edges in graph.items()}
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            cycle = on_path[on_path.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        on_path.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_import_reader_sees_imports():
    """The reader above finds the imports these tests depend on (a test of the test)."""
    assert "keras_bn._layer.paths" in _imports("keras_bn.batch_norm", top_level_only=True)
    assert "keras_bn._graph" in _imports("keras_bn.convert", top_level_only=True)
    assert "keras_bn.frozen" in _imports("keras_bn._graph.kinds", top_level_only=False)
    assert "keras_bn.frozen" not in _imports("keras_bn._graph.kinds", top_level_only=True)
