"""Shape of the code: short functions in the library and the app (ARCHITECTURE.md)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80


@pytest.mark.parametrize("package", ["mope", "app"])
def test_no_function_over_80_lines(package):
    long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                if lines > LIMIT:
                    long.append(f"{name} ({lines} lines)")
    assert not long, f"functions over {LIMIT} lines in {package}/: {', '.join(long)}"


def test_no_module_of_mope_is_named_like_a_function_the_package_exports():
    """`mope.plan` and `mope.evaluate` are functions: their modules (planning, evaluation) have other names, so
    importing a module never rebinds a package attribute."""
    import importlib
    import pkgutil
    import types

    import mope

    modules = {m.name for m in pkgutil.iter_modules(mope.__path__)}
    exported = {name for name, module in mope._EXPORTS.items() if module is not None}
    assert not modules & exported
    for name in ("planning", "evaluation"):
        importlib.import_module(f"mope.{name}")
    assert not isinstance(mope.plan, types.ModuleType) and not isinstance(mope.evaluate, types.ModuleType)
    assert mope.plan is importlib.import_module("mope.planning").plan
