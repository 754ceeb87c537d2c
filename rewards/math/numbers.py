"""Plain numbers without sympy: the fast path that decides most checks in-process.

A number is parsed from a regex-validated string into an exact ``Fraction`` (never ``eval``): integers with
thousands separators, decimals (also with a decimal comma), scientific notation, ``a/b``, ``\\frac{a}{b}`` and
mixed numbers (``4 4/9``); ``parse_arith`` also reads plain integer arithmetic (``10^2``, ``3 \\times 4``).
``decimals`` remembers the place a decimal was written to (``0.33``: 2, ``1.5e3``: -2), because the precision
policy (``numbers_match``, docs/math_checking.md) depends on it.

>>> parse_number("7,425,000").value, parse_number("1000,99").value, parse_number("-4 4/9").value
(Fraction(7425000, 1), Fraction(100099, 100), Fraction(-40, 9))
>>> parse_number("1.5e3").value, parse_number("1.5e3").decimals, parse_number("0.33").decimals
(Fraction(1500, 1), -2, 2)
>>> parse_number("11 6/6") is None, parse_arith("2^{10} - 3 \\\\times 4")
(True, Num(value=Fraction(1012, 1), decimals=None, approx=False))
"""

from __future__ import annotations

import math
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
    """Places after the point a decimal was written to (``1.5e3``: -2); None for an exact value (``1500``, ``3/2``)."""
    approx: bool = False
    """``value`` only approximates (to 30 digits) an exact irrational value such as ``\\sqrt{2}`` (the sympy path)."""


@dataclass(frozen=True)
class Rules:
    """What a task asks of an answer beyond its value (reward keywords, or read from the prompt).

    ``places`` / ``sig_figs``: the answer is to be rounded (``places=2``: to the hundredth; ``places=-2``: to the
    hundred); numbers then match when they differ by at most half a unit in that place. ``lowest_terms``: a
    fraction ``a/b`` with a common factor is rejected."""

    places: int | None = None
    sig_figs: int | None = None
    lowest_terms: bool = False

    def __post_init__(self) -> None:
        if self.sig_figs is not None and self.sig_figs < 1:
            raise ValueError(f"Rules.sig_figs must be >= 1, got {self.sig_figs}")
        if self.places is not None and self.sig_figs is not None:
            raise ValueError("Rules: give places or sig_figs, not both")


EXACT = Rules()
MIN_ROUNDED_PLACES = 2
"""A decimal stands for an exact value without a finite decimal expansion (1/3, sqrt 2) only when written with at
least this many places and correctly rounded: ``0.33`` is 1/3, ``0.3`` is not (the Math-Verify corpus convention)."""


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
        # e-notation shows a precision as positional decimals do: 1.5e3 is written to the hundreds (place -2)
        return Num(_signed(m["sign"], value), len(m["frac"] or "") - exp)
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


def numbers_match(gold: Num, pred: Num, rules: Rules = EXACT) -> bool:
    """The one precision policy, for positional decimals, thousands separators, percentages and e-notation alike.

    1. Equal values match (``2.50`` is ``2.5``, ``1.5e3`` is ``1500``).
    2. When the task asks for rounding (``rules``), numbers match when they differ by at most half a unit in the
       requested place.
    3. Otherwise a decimal matches only an exact value without a finite decimal expansion (1/3, sqrt 2) that it
       shows correctly rounded to at least ``MIN_ROUNDED_PLACES`` places. Two different written values never match:
       a prediction that differs from the gold at the gold's precision is wrong, and rounding a gold written as
       ``12345.6789`` (or ``1/8``, which is exactly 0.125) to fewer digits needs a request.

    >>> third, eighth = Num(Fraction(1, 3)), Num(Fraction(1, 8))
    >>> numbers_match(third, parse_number("0.33")), numbers_match(eighth, parse_number("0.13"))
    (True, False)
    >>> numbers_match(parse_number("12345.6789"), parse_number("12344.6789"))
    False
    >>> gold = parse_number("2.23")
    >>> numbers_match(gold, parse_number("2.232")), numbers_match(gold, parse_number("2.230"))
    (False, True)
    >>> numbers_match(parse_number("3.14159"), parse_number("3.14"), Rules(places=2))
    True
    """
    if gold.value == pred.value and not (gold.approx or pred.approx):
        return True
    place = requested_place(gold, rules)
    if place is not None:
        return abs(gold.value - pred.value) <= Fraction(1, 2) / Fraction(10) ** place
    return rounds_to(gold, pred) or rounds_to(pred, gold)


def requested_place(gold: Num, rules: Rules) -> int | None:
    """The decimal place the task asks answers to be rounded to (``sig_figs`` counted from the gold's magnitude)."""
    if rules.places is not None:
        return rules.places
    if rules.sig_figs is None:
        return None
    return rules.sig_figs - 1 - _log10_floor(abs(gold.value)) if gold.value else rules.sig_figs - 1


def _log10_floor(x: Fraction) -> int:
    """floor(log10 x) for x > 0, exactly (a float log10 is off for 10**k - tiny)."""
    e = len(str(x.numerator)) - len(str(x.denominator))  # 10**(e-1) < x < 10**(e+1)
    return e - 1 if Fraction(10) ** e > x else e


def terminates(num: Num) -> bool:
    """``num`` has a finite decimal expansion (its denominator has no prime factor but 2 and 5)."""
    if num.approx:
        return False
    d = num.value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def rounds_to(exact: Num, shown: Num) -> bool:
    """``shown`` is the exact, non-terminating ``exact`` correctly rounded to the (>= 2) places it was written with."""
    if exact.decimals is not None or shown.decimals is None or shown.decimals < MIN_ROUNDED_PLACES:
        return False
    if terminates(exact):
        return False  # 0.13 is not 1/8: that gold has an exact decimal, and 0.13 differs from it
    scale = 10**shown.decimals
    return abs(exact.value * scale - shown.value * scale) <= Fraction(1, 2)


_ARITH_TOKEN_RE = re.compile(r"\\times|\\cdot|\\div|\d+|[-+*/^(){}]|\s+")
MAX_ARITH_TOKENS = 60
MAX_ARITH_DIGITS = 400
"""Plain integer arithmetic is decided in-process only up to this many digits (bigger goes to the guarded path)."""


def parse_arith(s: str) -> Num | None:
    """The exact value of plain integer arithmetic (``10^2``, ``2^{10} - 3 \\times 4``, ``(7+5)/4``), or None.

    Decided without sympy so that the first check in a process is not held up by the worker pool's start-up; the
    grammar is integers, ``+ - * / ^``, ``\\times``, ``\\cdot``, ``\\div`` and brackets, and sizes are bounded before
    any power is taken.
    """
    tokens = _arith_tokens(s)
    if tokens is None or len(tokens) > MAX_ARITH_TOKENS or not any(t.isdigit() for t in tokens):
        return None
    try:
        value, pos = _sum(tokens, 0)
    except (_NotArith, ZeroDivisionError):
        return None
    return Num(value) if pos == len(tokens) else None


class _NotArith(Exception):
    pass


def _arith_tokens(s: str) -> list[str] | None:
    out, pos = [], 0
    while pos < len(s):
        m = _ARITH_TOKEN_RE.match(s, pos)
        if m is None:
            return None
        if not m.group().isspace():
            out.append({"\\times": "*", "\\cdot": "*", "\\div": "/", "{": "(", "}": ")"}.get(m.group(), m.group()))
        pos = m.end()
    return out


def _sum(t: list[str], i: int) -> tuple[Fraction, int]:
    value, i = _product(t, i)
    while i < len(t) and t[i] in "+-":
        rhs, j = _product(t, i + 1)
        value, i = (value + rhs if t[i] == "+" else value - rhs), j
    return value, i


def _product(t: list[str], i: int) -> tuple[Fraction, int]:
    value, i = _unary(t, i)
    while i < len(t) and t[i] in "*/":
        rhs, j = _unary(t, i + 1)
        value, i = (value * rhs if t[i] == "*" else value / rhs), j
    return value, i


def _unary(t: list[str], i: int) -> tuple[Fraction, int]:
    if i < len(t) and t[i] in "+-":
        value, j = _unary(t, i + 1)
        return (-value if t[i] == "-" else value), j
    return _power(t, i)


def _power(t: list[str], i: int) -> tuple[Fraction, int]:
    base, i = _atom(t, i)
    if i < len(t) and t[i] == "^":
        exp, i = _unary(t, i + 1)  # right-associative: 2^3^2 is 2^9
        if exp.denominator != 1 or (base == 0 and exp < 0):
            raise _NotArith
        digits = max(len(str(abs(base.numerator))), len(str(base.denominator)))
        if digits * abs(exp.numerator) > MAX_ARITH_DIGITS:
            raise _NotArith
        base = base ** int(exp)
    return base, i


def _atom(t: list[str], i: int) -> tuple[Fraction, int]:
    if i >= len(t):
        raise _NotArith
    if t[i].isdigit():
        if len(t[i]) > MAX_ARITH_DIGITS:
            raise _NotArith
        return Fraction(int(t[i])), i + 1
    if t[i] == "(":
        value, j = _sum(t, i + 1)
        if j >= len(t) or t[j] != ")":
            raise _NotArith
        return value, j + 1
    raise _NotArith


def reduced(s: str) -> bool | None:
    """Whether the fraction ``s`` (``a/b``, ``\\frac{a}{b}``, a mixed number) is in lowest terms; None when ``s`` is
    not a numeric fraction (decimals, integers, radicals: ``lowest_terms`` does not apply to them).

    >>> reduced("2/4"), reduced("-\\\\frac{3}{6}"), reduced("1 2/4"), reduced("3/4"), reduced("0.5")
    (False, False, False, True, None)
    """
    m = _RATIO_RE.fullmatch(s.strip()) or _MIXED_RE.fullmatch(s.strip()) or _MIXED_TEX_RE.fullmatch(s.strip())
    if not m:
        return None
    a, b = (m["a"], m["b"]) if m["a"] is not None else (m["c"], m["d"])
    return math.gcd(int(a), int(b)) == 1
