"""Verdicts, computed in the parent from raw values the sandbox reported.

>>> stdout_matches("3 \\n4\\n\\n", "3\\n4")
True
>>> stdout_matches("0.3333333", "0.333333333", float_tol=1e-6), stdout_matches("0.33", "0.333333333")
(True, False)
>>> exact_equal([1, 2.0], [1, 2.0]), exact_equal(1, 1.0), exact_equal(True, 1), exact_equal(1, True)
(True, False, False, False)
>>> exact_equal(1, 1.0000001, float_tol=1e-6), exact_equal(10**400, 1.0, float_tol=1e-6)
(True, False)
"""

from __future__ import annotations

import math
from typing import Any


def _lines(text: str) -> list[list[str]]:
    lines = [ln.split() for ln in text.strip().splitlines()]
    return [ln for ln in lines if ln]  # blank lines carry no answer


def stdout_matches(actual: str, expected: str, float_tol: float | None = None) -> bool:
    """Whitespace-normalised comparison (token by token, line by line); numbers within ``float_tol`` when set."""
    a, e = _lines(actual), _lines(expected)
    if float_tol is None:
        return a == e
    if len(a) != len(e) or any(len(x) != len(y) for x, y in zip(a, e, strict=True)):
        return False
    return all(_token_eq(x, y, float_tol) for la, le in zip(a, e, strict=True) for x, y in zip(la, le, strict=True))


def _token_eq(a: str, b: str, tol: float) -> bool:
    if a == b:
        return True
    try:
        fa, fb = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(fa, fb, rel_tol=tol, abs_tol=tol)


def _close(a: int | float, b: int | float, tol: float) -> bool:
    """``math.isclose``, for an int beyond float range too (a program may return one where a float is expected:
    ``isclose`` would raise OverflowError; such an int is close to no float)."""
    try:
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    except OverflowError:
        return False


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


def exact_equal(actual: Any, expected: Any, float_tol: float | None = None) -> bool:
    """Type-exact structural equality of JSON values (``1 != 1.0``, ``True != 1``); with ``float_tol`` an int and a
    float compare numerically. Both sides are plain decoded JSON, so no user ``__eq__`` can run here."""
    if type(actual) is not type(expected):
        if float_tol is not None and _is_number(actual) and _is_number(expected):
            return _close(actual, expected, float_tol)
        return False
    if type(actual) is list:
        return len(actual) == len(expected) and all(
            exact_equal(a, e, float_tol) for a, e in zip(actual, expected, strict=True)
        )
    if type(actual) is dict:
        return actual.keys() == expected.keys() and all(exact_equal(actual[k], expected[k], float_tol) for k in actual)
    if type(actual) is float:
        if math.isnan(actual) or math.isnan(expected):
            return math.isnan(actual) and math.isnan(expected)
        return actual == expected or (float_tol is not None and _close(actual, expected, float_tol))
    return actual == expected
