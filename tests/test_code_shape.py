"""Files you can read in one sitting and functions you can hold in your head (STYLE.md habit 6): no file over 600
lines and no function over 80 in the packages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "rl", "rewards", "rollouts")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 80


def too_long(source: str, where: str) -> list[str]:
    """``where``'s file and function length violations.

    >>> too_long("def f():\\n" + "    x = 1\\n" * 80, "m.py")
    ['m.py:1 f() has 81 lines (max 80)']
    """
    out = []
    lines = source.count("\n")
    if lines > MAX_FILE_LINES:
        out.append(f"{where} has {lines} lines (max {MAX_FILE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{where}:{node.lineno} {node.name}() has {n} lines (max {MAX_FUNCTION_LINES})")
    return out


def test_files_and_functions_are_short():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += too_long(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []
