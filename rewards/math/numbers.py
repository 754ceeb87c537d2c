"""Plain numbers without sympy: the fast path that decides most checks in-process.

A number is parsed from a regex-validated string into an exact ``Fraction`` (never ``eval``): integers with
thousands separators, decimals (also with a decimal comma), scientific notation, ``a/b``, ``\\frac{a}{b}`` and
mixed numbers (``4 4/9``). ``decimals`` remembers how many places a decimal was written with, because a
rounded decimal answer (``0.33``) is accepted for an exact gold (``1/3``) only to the places it shows.

>>> parse_number("7,425,000").value, parse_number("1000,99").value, parse_number("-4 4/9").value
(Fraction(7425000, 1), Fraction(100099, 100), Fraction(-40, 9))
>>> parse_number("1.5e3").value, parse_number("0.33").decimals, parse_number("11 6/6") is None
(Fraction(1500, 1), 2, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_EXPONENT = 400
"""Largest |exponent| accepted in scientific notation: ``1e1000000`` would build a million-digit integer."""
MAX_DIGITS = 400
"""Longer digit strings are not plain numbers (they go to the guarded sympy path, which rejects them)."""

_INT = r"\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+|\d+"
_NUM_RE = re.compile(
    rf"(?P<sign>[-+]?)(?P<int>{_INT})?(?:\.(?P<frac>\d+))?"
    r"(?:(?:[eE]|\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*)\{?(?P<exp>[-+]?\d+)\}?)?"
)
_DECIMAL_COMMA_RE = re.compile(r"(?P<sign>[-+]?)(?P<int>\d+),(?P<frac>\d{2}|\d{4,})")
_ZERO_COMMA_RE = re.compile(r"(?P<sign>[-+]?)(?P<int>0),(?P<frac>\d+)")
_RATIO_RE = re.compile(r"(?P<sign>[-+]?)(?:\\frac\{(?P<a>\d+)\}\{(?P<b>\d+)\}|(?P<c>\d+)\s*/\s*(?P<d>\d+))")
_MIXED_RE = re.compile(
    rf"(?P<sign>[-+]?)(?P<whole>{_INT}) (?:\\frac\{{(?P<a>\d+)\}}\{{(?P<b>\d+)\}}|(?P<c>\d+)/(?P<d>\d+))"
)
_MIXED_TEX_RE = re.compile(r"(?P<sign>[-+]?)(?P<whole>\d+)\s*\\frac\{(?P<a>\d+)\}\{(?P<b>\d+)\}")


@dataclass(frozen=True)
class Num:
    """An exact number and, for decimals, the number of places it was written with."""

    value: Fraction
    decimals: int | None = None


def parse_number(s: str) -> Num | None:
    """The number ``s`` spells (whole string), or None when ``s`` is not a plain number."""
    s = s.strip()
    if not s or len(s) > MAX_DIGITS:
        return None
    for parse in (_parse_decimal, _parse_ratio, _parse_mixed):
        num = parse(s)
        if num is not None:
            return num
    return None


def _signed(sign: str, value: Fraction) -> Fraction:
    return -value if sign == "-" else value


def _parse_decimal(s: str) -> Num | None:
    m = _ZERO_COMMA_RE.fullmatch(s) or _DECIMAL_COMMA_RE.fullmatch(s)
    if m:  # "1000,99" and "0,111" use a decimal comma; "7,425" stays a thousands separator below
        return Num(_signed(m["sign"], Fraction(f"{m['int']}.{m['frac']}")), len(m["frac"]))
    m = _NUM_RE.fullmatch(s)
    if not m or (m["int"] is None and m["frac"] is None):
        return None
    digits = (m["int"] or "0").replace(",", "").replace(" ", "")
    value = Fraction(f"{digits}.{m['frac']}") if m["frac"] else Fraction(int(digits))
    if m["exp"] is not None:
        exp = int(m["exp"])
        if abs(exp) > MAX_EXPONENT:
            return None
        value *= Fraction(10) ** exp
        return Num(_signed(m["sign"], value))
    return Num(_signed(m["sign"], value), len(m["frac"]) if m["frac"] else None)


def _parse_ratio(s: str) -> Num | None:
    m = _RATIO_RE.fullmatch(s)
    if not m:
        return None
    a, b = (m["a"], m["b"]) if m["a"] is not None else (m["c"], m["d"])
    if int(b) == 0:
        return None
    return Num(_signed(m["sign"], Fraction(int(a), int(b))))


def _parse_mixed(s: str) -> Num | None:
    m = _MIXED_RE.fullmatch(s) or _MIXED_TEX_RE.fullmatch(s)
    if not m:
        return None
    a, b = (m["a"], m["b"]) if m["a"] is not None else (m["c"], m["d"])
    num, den = int(a), int(b)
    # A proper fraction only: "11 6/6" or "4 4/0" is not a mixed number, and guessing what was meant is wrong.
    if den == 0 or num >= den:
        return None
    whole = int(m["whole"].replace(",", "").replace(" ", ""))
    return Num(_signed(m["sign"], whole + Fraction(num, den)))


def numbers_match(gold: Num, pred: Num, rel_tol: float = 1e-4) -> bool:
    """Exact equality, a relative tolerance when a decimal is involved, or an exact value rounded to the places shown.

    >>> numbers_match(Num(Fraction(1, 3)), parse_number("0.33"))
    True
    >>> numbers_match(parse_number("2.23"), parse_number("2.232"))
    False
    """
    if gold.value == pred.value:
        return True
    if gold.decimals is None and pred.decimals is None:
        return False
    if close(float(gold.value), float(pred.value), rel_tol):
        return True
    return rounds_to(gold, pred) or rounds_to(pred, gold)


def close(a: float, b: float, rel_tol: float = 1e-4) -> bool:
    return abs(a - b) <= rel_tol * max(abs(a), abs(b)) or abs(a - b) <= 1e-9


def rounds_to(exact: Num, shown: Num) -> bool:
    """``shown`` is ``exact`` rounded to the (at least two) decimal places ``shown`` was written with."""
    if exact.decimals is not None or shown.decimals is None or shown.decimals < 2:
        return False
    scale = 10**shown.decimals
    return abs(exact.value * scale - shown.value * scale) <= Fraction(1, 2)
