"""The layers point down only: ``core`` -> ``rewards`` -> ``rollouts`` -> ``rl`` (docs/architecture.md).

Every import statement in the packages is read from the source (function-level imports included), so a lazy
import that points up fails here as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A package may import packages of a lower rank only (and itself).
RANK = {"core": 0, "rewards": 1, "rollouts": 2, "rl": 3}


def imported_packages(source: str, *, package: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of a project package in ``source``; relative imports stay in
    ``package``.

    >>> imported_packages("import rl.trainer\\nfrom core.files import atomic_write\\nimport torch", package="x")
    [(1, 'rl'), (2, 'core')]
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in RANK]
    return found


def upward_edges(source: str, *, package: str, where: str = "<source>") -> list[str]:
    """``where:line imports <package>`` for each import of a package ranked at or above ``package``'s own
    (other than itself): ``rewards`` and ``rollouts`` never import ``rl``, ``core`` imports nothing of the
    project."""
    return [
        f"{where}:{line} ({package}) imports {target}"
        for line, target in imported_packages(source, package=package)
        if target != package and RANK[target] >= RANK[package]
    ]


def test_no_upward_imports():
    edges = []
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            edges += upward_edges(path.read_text(), package=package, where=str(path.relative_to(ROOT)))
    assert edges == [], "imports that point up a layer:\n" + "\n".join(edges)


@pytest.mark.parametrize(
    ("package", "line"),
    [
        ("rewards", "from rl.registry import Registry"),  # the edge this layering removed
        ("rollouts", "    from rl.trainer import GRPOTrainer"),  # a lazy import inside a function counts too
        ("core", "import rollouts.records"),
        ("rewards", "from rollouts.store import load"),  # rewards sits below rollouts
    ],
)
def test_an_upward_import_is_caught(package, line):
    """The mutation: one upward import added to a real module of the package makes the walk fail."""
    real = next((ROOT / package).rglob("*.py")).read_text()
    body = f"def f():\n{line}\n" if line.startswith(" ") else line + "\n"
    assert upward_edges(real, package=package) == []
    assert len(upward_edges(real + "\n" + body, package=package)) == 1


def test_downward_imports_are_allowed():
    assert upward_edges("from core.registry import Registry\nimport rewards.base\n", package="rollouts") == []
