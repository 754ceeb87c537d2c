"""Test specifications -> typed cases, and program extraction from a completion.

Three JSON-able formats (a dataset column may hold the dict or its JSON string)::

    {"stdio": [{"input": "1 2\\n", "output": "3\\n"}, ...]}
    {"function": {"name": "add", "cases": [{"args": [1, 2], "kwargs": {}, "expected": 3}, ...]}}
    {"asserts": "assert add(1, 2) == 3\\n...", "entry_point": "add"}   # entry_point only for `candidate(...)`

>>> [c.expected for c in parse_tests({"asserts": "assert add(1, 2) == 3\\nassert add(*x) == 1"}).cases]
[3, None]
>>> parse_tests({"asserts": "assert add(1, 2) == 3\\nassert add(*x) == 1"}).cases[1].kind
'assert'
>>> extract_program("Here:\\n```python\\nprint(1)\\n```\\nand finally\\n```\\nprint(2)\\n```")
'print(2)\\n'
>>> extract_program("<answer>print(3)</answer>") is None, extract_program("no code") is None
(False, True)
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Case:
    """One check. ``kind``: ``stdio`` (input -> expected stdout), ``call`` (name(*args, **kwargs) -> expected),
    ``assert`` (a statement run inside the sandbox; forgeable, only with explicit opt-in)."""

    kind: str
    input: str = ""
    name: str = ""
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    src: str = ""

    def to_sandbox(self) -> dict:
        """What the sandbox may see: never ``expected``."""
        if self.kind == "stdio":
            return {"kind": "stdio", "input": self.input}
        if self.kind == "call":
            return {"kind": "call", "name": self.name, "args": self.args, "kwargs": self.kwargs}
        return {"kind": "assert", "src": self.src}


@dataclass(frozen=True)
class TestSpec:
    cases: list[Case]
    unconverted: int = 0
    """Assert lines that are not plain ``f(literals) == literal`` (run only with ``allow_forgeable``)."""


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
    """``assert f(<literals>) == <literal>`` (either side, or ``is True/False/None``) -> call cases; any other
    assert becomes an ``assert`` case (forgeable)."""
    cases, unconverted = [], 0
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.Assert):
            continue
        case = _assert_to_call(node.test, entry_point)
        if case is None:
            unconverted += 1
            case = Case("assert", src=ast.unparse(node).replace("candidate(", f"{entry_point or 'candidate'}("))
        cases.append(case)
    return TestSpec(cases, unconverted)


def _assert_to_call(test: ast.expr, entry_point: str | None) -> Case | None:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and right.value in (True, False, None):
        call, lit = left, right
    elif isinstance(op, ast.Eq):
        call, lit = (left, right) if isinstance(left, ast.Call) else (right, left)
    else:
        return None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        return None
    name = call.func.id
    if name == "candidate":
        if entry_point is None:
            return None
        name = entry_point
    try:
        args = [_json_literal(a, as_arg=True) for a in call.args]
        kwargs = {k.arg: _json_literal(k.value, as_arg=True) for k in call.keywords}
        expected = _json_literal(lit, as_arg=False)
    except ValueError:
        return None
    if None in kwargs:  # **mapping
        return None
    return Case("call", name=name, args=args, kwargs=kwargs, expected=expected)


def _json_literal(node: ast.expr, as_arg: bool) -> Any:
    """literal_eval, restricted to values that survive JSON unchanged (tuples allowed only as expected values,
    where they compare as lists because the sandbox returns JSON)."""
    if isinstance(node, ast.Starred):
        raise ValueError("starred argument")
    value = ast.literal_eval(node)
    return _to_json(value, allow_tuple=not as_arg)


def _to_json(v: Any, allow_tuple: bool) -> Any:
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is list or (type(v) is tuple and allow_tuple):
        return [_to_json(x, allow_tuple) for x in v]
    if type(v) is dict and all(type(k) is str for k in v):
        return {k: _to_json(x, allow_tuple) for k, x in v.items()}
    raise ValueError(f"{type(v).__name__} does not survive JSON")
