"""Shape of the code: short functions in the library (ARCHITECTURE.md)."""
import ast
from pathlib import Path

MOPE = Path(__file__).resolve().parents[1] / "mope"
LIMIT = 80
# distill.distill is being split by the DataLoader rework (issue 12 report); nothing else may grow past LIMIT
KNOWN = {"distill.py:distill"}


def test_no_function_in_mope_over_80_lines():
    long = []
    for path in sorted(MOPE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(MOPE)}:{node.name}"
                if lines > LIMIT and name not in KNOWN:
                    long.append(f"{name} ({lines} lines)")
    assert not long, f"functions over {LIMIT} lines: {', '.join(long)}"
