"""Test specifications -> typed cases, and program extraction from a completion.

Three JSON-able formats (a dataset column may hold the dict or its JSON string)::

    {"stdio": [{"input": "1 2\\n", "output": "3\\n"}, ...]}
    {"function": {"name": "add", "cases": [{"args": [1, 2], "kwargs": {}, "expected": 3}, ...]}}
    {"asserts": "assert add(1, 2) == 3\\n...", "entry_point": "add"}   # entry_point for `candidate(...)`

Asserts (MBPP-style lines or HumanEval's ``def check(candidate)``) become ``check`` cases: the test code runs as
written, in a judge process inside the sandbox that never runs the program and alone reports verdicts.

>>> [c.kind for c in parse_tests({"asserts": "assert add(1, 2) == 3\\nassert add(*x) == 1"}).cases]
['check', 'check']
>>> extract_program("Here:\\n```python\\nprint(1)\\n```\\nand finally\\n```\\nprint(2)\\n```")
'print(2)\\n'
>>> extract_program("<answer>print(3)</answer>") is None, extract_program("no code") is None
(False, True)
"""

from __future__ import annotations

import ast
import builtins
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Case:
    """One check. ``kind``: ``stdio`` (input -> expected stdout), ``call`` (name(*args, **kwargs) -> expected),
    ``check`` (test code ``src`` run by the judge process; ``proxies`` are the names it calls into the program,
    ``candidate`` meaning ``name``, the entry point; ``modules`` stdlib modules it uses without importing)."""

    kind: str
    input: str = ""
    name: str = ""
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    src: str = ""
    proxies: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()

    def to_sandbox(self) -> dict:
        """What the sandbox (and the program) may see: never ``expected``, never a check's test code."""
        if self.kind == "stdio":
            return {"kind": "stdio", "input": self.input}
        if self.kind == "call":
            return {"kind": "call", "name": self.name, "args": self.args, "kwargs": self.kwargs}
        return {"kind": "check"}

    def to_judge(self) -> dict | None:
        """What only the judge process reads (after the program's process was forked): a check's test code."""
        if self.kind != "check":
            return None
        return {
            "src": self.src,
            "entry_point": self.name,
            "proxies": list(self.proxies),
            "modules": list(self.modules),
        }


@dataclass(frozen=True)
class TestSpec:
    cases: list[Case]
    judged: int = 0
    """How many cases are ``check`` cases (run by the judge process)."""


# Fence tags that mark C++; every other tag (or none) is taken as Python, the default language of the tasks.
CPP_TAGS = frozenset({"cpp", "c++", "cxx", "cc"})


def extract_program(completion: str) -> str | None:
    """The last fenced code block (any language tag), else the ``<answer>`` content, else ``None``."""
    found = extract_code(completion)
    return None if found is None else found[0]


def extract_code(completion: str) -> tuple[str, str] | None:
    """``(source, language)`` of the program ``extract_program`` finds; ``language`` is ``cpp`` for a block
    tagged cpp/c++/cxx/cc, else ``python``.

    >>> extract_code("<think>...</think>```cpp\\nint main(){}\\n```")
    ('int main(){}\\n', 'cpp')
    >>> extract_code("<answer>```python\\nprint(1)\\n```</answer>")
    ('print(1)\\n', 'python')
    """
    blocks = _FENCE.findall(completion)
    if blocks:
        tag, src = blocks[-1]
        return src, _language(tag)
    m = _ANSWER.findall(completion)
    if m and m[-1].strip():
        inner = _FENCE.findall(m[-1])
        src = _FENCE.sub(lambda b: b.group(2), m[-1]).strip() + "\n"
        return src, _language(inner[-1][0] if inner else "")
    return None


def _language(tag: str) -> str:
    return "cpp" if tag.lower() in CPP_TAGS else "python"


def parse_tests(tests: dict | str) -> TestSpec:
    if isinstance(tests, str):
        tests = json.loads(tests)
    if not isinstance(tests, dict) or len(set(tests) & {"stdio", "function", "asserts"}) != 1:
        raise ValueError(f"tests: expected exactly one of stdio/function/asserts, got keys {list(tests)}")
    if "stdio" in tests:
        return TestSpec([Case("stdio", input=t["input"], expected=t["output"]) for t in tests["stdio"]])
    if "function" in tests:
        fn = tests["function"]
        return TestSpec(
            [
                Case(
                    "call",
                    name=fn["name"],
                    args=list(c.get("args", [])),
                    kwargs=dict(c.get("kwargs", {})),
                    expected=c["expected"],
                )
                for c in fn["cases"]
            ]
        )
    return asserts_to_cases(tests["asserts"], tests.get("entry_point"))


def asserts_to_cases(src: str, entry_point: str | None = None) -> TestSpec:
    """Test code -> ``check`` cases, run as written by the judge process in the sandbox (see ``harness``).

    One case per test statement (a top-level statement holding an ``assert``), each with the other top-level
    statements before it (imports, helpers, data). HumanEval's ``def check(candidate)`` without top-level asserts
    gives one case per statement of its body that holds an ``assert`` (with the body's other statements before
    it), each ending in ``check(candidate)``; ``candidate`` calls the ``entry_point``. Code with no assert at all
    is one case. ``1 == 1.0`` and tuple/list differences follow Python, as the test's author meant.

    >>> spec = asserts_to_cases("import math\\nassert f(2) == 4\\nfor x in [1, 2]:\\n    assert f(x) > 0\\n")
    >>> [c.src.splitlines() for c in spec.cases]
    [['import math', 'assert f(2) == 4'], ['import math', 'for x in [1, 2]:', '    assert f(x) > 0']]
    >>> spec.cases[0].proxies, spec.judged
    (('f',), 2)
    >>> he = asserts_to_cases("def check(candidate):\\n    xs = [1]\\n    assert candidate(xs) == 1\\n", "g")
    >>> he.cases[0].src.splitlines()[-1], he.cases[0].proxies
    ('check(candidate)', ('candidate', 'g'))
    """
    tree = ast.parse(src)
    if not any(_holds_assert(n) for n in tree.body):
        check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
        if check is not None:
            if entry_point is None:
                raise ValueError("tests: asserts define `check(candidate)` but give no entry_point")
            return _check_cases(tree, check, entry_point)
        return TestSpec([_check_case(tree.body, entry_point)], judged=1)
    cases = []
    for i, node in enumerate(tree.body):
        if _holds_assert(node):
            prelude = [n for n in tree.body[:i] if not _holds_assert(n)]
            cases.append(_check_case([*prelude, node], entry_point))
    return TestSpec(cases, judged=len(cases))


def _holds_assert(node: ast.stmt) -> bool:
    """A test statement: one holding an ``assert`` outside any def/class (those are helpers, called by tests)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return False
    if isinstance(node, ast.Assert):
        return True
    return any(_holds_assert(c) for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt))


def _check_cases(tree: ast.Module, check: ast.FunctionDef, entry_point: str) -> TestSpec:
    call = ast.Expr(ast.Call(ast.Name("check", ast.Load()), [ast.Name("candidate", ast.Load())], []))
    steps = [j for j, n in enumerate(check.body) if _holds_assert(n)]
    if not steps:  # asserts only in nested helpers, or none: the whole check is one case
        steps = [len(check.body) - 1]
    cases = []
    for j in steps:
        body = [n for n in check.body[:j] if not _holds_assert(n)] + [check.body[j]]
        part = ast.FunctionDef(
            name=check.name, args=check.args, body=body, decorator_list=check.decorator_list, returns=check.returns
        )
        module = [part if n is check else n for n in tree.body] + [call]
        cases.append(_check_case(module, entry_point))
    return TestSpec(cases, judged=len(cases))


def _check_case(statements: list[ast.stmt], entry_point: str | None) -> Case:
    module = ast.fix_missing_locations(ast.Module(statements, type_ignores=[]))
    loaded, bound = set(), set()
    for n in ast.walk(module):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(n.name)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, ast.alias):
            bound.add((n.asname or n.name).partition(".")[0])
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    free = loaded - bound - set(dir(builtins))
    if entry_point is not None:  # ``candidate`` is a parameter of check() and, at the call, the entry point
        free |= {"candidate", entry_point} & (loaded | {entry_point})
    modules = sorted(n for n in free if n in sys.stdlib_module_names and n != entry_point)
    proxies = tuple(sorted(free - set(modules)))
    return Case(
        "check", name=entry_point or "", src=ast.unparse(module) + "\n", proxies=proxies, modules=tuple(modules)
    )
