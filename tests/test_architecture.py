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
