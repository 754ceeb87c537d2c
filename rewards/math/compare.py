"""Deciding whether two parsed answers are equal.

``equal(gold, pred, use_sympy, rules)`` walks the two structures (``rules``: rounding asked for, lowest terms).
With ``use_sympy=False`` only plain numbers are compared (in-process, no timeout needed) and anything else raises
``NeedsSympy``; the worker pool calls it again with ``use_sympy=True``. LaTeX leaves go through
latex2sympy2_extended's grammar parser (never ``sympify``/``eval``), and ``too_big`` rejects expressions such as
``10^{10^{10}}`` before anything evaluates them. Plain numbers follow one precision policy on both paths
(``numbers.numbers_match``; docs/math_checking.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

import mpmath
import sympy
from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy

from rewards.math.numbers import EXACT, Num, Rules, numbers_match, parse_arith, parse_number, reduced, requested_place
from rewards.math.structure import Atom, Choice, Cup, Items, Node, Rel, Span, Text

WARMUP_TEX = (
    r"\frac{1}{2}+x",
    r"\sqrt[3]{x^2}-\sqrt{2}",
    r"\sum_{k=0}^{n-1} F_k F_{n-k-1}",
    r"\int_0^1 x^2 \, dx",
    r"\lim_{x\to 0} \frac{\sin x}{x}",
    r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}",
    r"\binom{5}{2} + 5!",
    r"\log_2 8 + \ln e",
    r"\sin^2(x)+\cos^2(x) = \tan^{-1} y",
    r"|x-1| \cdot \lfloor y \rfloor",
    r"e^{i\pi} + 3 \times 10^{5}",
    r"a_{37} \cdot b_n + \pi r^2",
    r"f(x) = x^2 + 2x + 1",
    r"3x^{2}(2+5x^{3}) - (p+1)(q-3)",
    r"\frac{x^2}{9}+\frac{y^2}{16}=1",
    r"-\frac{2t}{3(t^2+1)^{2/3}}",
    r"\left[\begin{array}{cc}1 & 0 \\ 0 & 1\end{array}\right]",
    r"\{1, 2\} \cup (3, \infty)",
)
"""Parsed once by each worker before it reports ready: the LaTeX grammar's ANTLR parser builds its prediction
tables lazily, so the first sum, integral or matrix a process meets costs up to a second; afterwards milliseconds."""
MAX_TEX_CHARS = 400
MAX_DIGITS = 100_000
"""Integers with more digits than this are never built: ``2^{2^{2^{2^{2}}}}`` has 19,729 and is fine."""
_CONFIG = ConversionConfig(interpret_as_mixed_fractions=True, lowercase_symbols=True)
_POINTS = (0.5731, 1.2917, 2.3311)


class NeedsSympy(Exception):
    """The fast path met something other than a plain number."""


def equal(gold: Node, pred: Node, use_sympy: bool, rules: Rules = EXACT) -> bool:
    gold, pred = _unwrap(gold), _unwrap(pred)
    if gold == pred:  # the same answer written the same way (after normalization): no math needed
        return True
    if isinstance(gold, Rel) and gold.op == "=":
        return _equal_eq(gold, pred, use_sympy, rules)
    if isinstance(pred, Rel) and pred.op == "=":
        return equal(gold, pred.rhs, use_sympy, rules)  # "\sqrt{4} = 2" answers 2
    if isinstance(gold, Choice):
        return _letter(pred) == gold.letter
    if isinstance(gold, Text) or isinstance(pred, Text):
        return _plain(gold) is not None and _plain(gold) == _plain(pred)
    if isinstance(gold, Atom) and isinstance(pred, Atom):
        return _equal_atoms(gold, pred, use_sympy, rules)
    if isinstance(gold, Items) and isinstance(pred, Items):
        return _equal_items(gold, pred, use_sympy, rules)
    if isinstance(gold, Span | Items) and isinstance(pred, Span | Items):
        return _equal_spans(_as_span(gold), _as_span(pred), use_sympy, rules)
    if isinstance(gold, Cup) and isinstance(pred, Cup):
        return _matching(gold.parts, pred.parts, use_sympy, rules)
    if isinstance(gold, Rel) and isinstance(pred, Rel):
        return gold.op == pred.op and _same_relation(gold, pred, use_sympy, rules)
    return False


def _unwrap(node: Node) -> Node:
    while isinstance(node, Items) and len(node.items) == 1:
        node = node.items[0]
    return node


def _equal_eq(gold: Rel, pred: Node, use_sympy: bool, rules: Rules = EXACT) -> bool:
    if isinstance(pred, Rel) and pred.op == "=":
        if not gold.label or not pred.label:
            if not gold.label and not pred.label or not isinstance(gold.lhs, Atom) or not isinstance(pred.lhs, Atom):
                return _same_relation(gold, pred, use_sympy, rules)
            if _same_relation(gold, pred, use_sympy, rules):
                return True
        return equal(gold.rhs, pred.rhs, use_sympy, rules)
    return gold.label and equal(gold.rhs, pred, use_sympy, rules)


def _letter(node: Node) -> str | None:
    if isinstance(node, Choice):
        return node.letter
    text = _plain(node)
    return text.upper() if text is not None and len(text) == 1 and text.upper() in "ABCDE" else None


def _plain(node: Node) -> str | None:
    if isinstance(node, Text):
        return node.s
    if isinstance(node, Choice):
        return node.letter.lower()
    if isinstance(node, Atom) and not node.pct:
        return "".join(node.tex.split()).replace("{", "").replace("}", "").lower()
    return None


def _equal_items(gold: Items, pred: Items, use_sympy: bool, rules: Rules = EXACT) -> bool:
    by_name = _by_name(gold, pred)
    if by_name is not None:  # "a_3 = 2, a_{37} = 19" answers "a_{37} = 19, a_3 = 2"
        return all(equal(g, p, use_sympy, rules) for g, p in zip(gold.items, by_name, strict=True))
    if "tuple" in (gold.kind, pred.kind) and "set" not in (gold.kind, pred.kind):
        if len(gold.items) != len(pred.items):
            return False
        return all(equal(g, p, use_sympy, rules) for g, p in zip(gold.items, pred.items, strict=True))
    return _matching(_unique(gold.items), _unique(pred.items), use_sympy, rules)


def _by_name(gold: Items, pred: Items) -> tuple[Node, ...] | None:
    """``pred``'s values in the order of ``gold``'s names, when both name the same distinct unknowns."""
    if not gold.names or not pred.names or len(set(gold.names)) != len(gold.names):
        return None
    if sorted(gold.names) != sorted(pred.names):
        return None
    value = dict(zip(pred.names, pred.items, strict=True))
    return tuple(value[n] for n in gold.names)


def _unique(nodes: tuple[Node, ...]) -> tuple[Node, ...]:
    """Order-free answers are sets: a part written twice (``(3,17), (3, 17)``) counts once."""
    return tuple(dict.fromkeys(nodes))


def _matching(gold: tuple[Node, ...], pred: tuple[Node, ...], use_sympy: bool, rules: Rules = EXACT) -> bool:
    """Order-free: every gold part equals a distinct pred part (greedy, fine for answer-sized lists)."""
    if len(gold) != len(pred):
        return False
    left = list(pred)
    for g in gold:
        hit = next((i for i, p in enumerate(left) if equal(g, p, use_sympy, rules)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _as_span(node: Node) -> Span | None:
    if isinstance(node, Span):
        return node
    if isinstance(node, Items) and node.kind == "tuple" and len(node.items) == 2:
        return Span(node.items[0], node.items[1], False, False)  # "(0, 1)" is also the open interval
    return None


def _equal_spans(gold: Span | None, pred: Span | None, use_sympy: bool, rules: Rules = EXACT) -> bool:
    if gold is None or pred is None or (gold.lo_closed, gold.hi_closed) != (pred.lo_closed, pred.hi_closed):
        return False
    return equal(gold.lo, pred.lo, use_sympy, rules) and equal(gold.hi, pred.hi, use_sympy, rules)


# ---- leaves -------------------------------------------------------------------------------------------------


def _equal_atoms(gold: Atom, pred: Atom, use_sympy: bool, rules: Rules = EXACT) -> bool:
    if re.fullmatch(r"\d+:\d\d", gold.tex) or re.fullmatch(r"\d+:\d\d", pred.tex):
        return gold.tex == pred.tex  # a clock time, not the ratio 12:00
    if rules.lowest_terms and reduced(pred.tex) is False:
        return False  # "2/4" where the task asks for lowest terms (by value it equals 1/2)
    g, p = _value(gold.tex, use_sympy), _value(pred.tex, use_sympy)
    if g is None or p is None:
        return False
    if pred.pct and not gold.pct and _whole(g) and _whole(p) and g.value == p.value:
        # "10%" for the gold 10: the question asked for a percentage and the gold omits the sign (NeMo-Skills and
        # Qwen graders). Only for whole numbers, where that reading is the usual one: "4 4/9%" stays 40/900.
        return True
    # A rounding place asked of a percentage ("to the nearest tenth" of 12.5%) is a place of the percent: compared
    # as a fraction (0.125) it is two places further right.
    in_percent = replace(rules, places=rules.places + 2) if rules.places is not None else rules
    golds = [(_scale(g, 100), in_percent), (g, rules)] if gold.pct else [(g, rules)]
    preds = [p] if gold.pct and pred.pct else [_scale(p, 100)] if pred.pct else [p]
    return any(_equal_values(a, b, r) for a, r in golds for b in preds)


def _whole(v: Num | sympy.Basic) -> bool:
    return isinstance(v, Num) and v.decimals is None and v.value.denominator == 1


def _value(tex: str, use_sympy: bool) -> Num | sympy.Basic | None:
    num = parse_number(tex) or parse_arith(tex)  # "10^2" needs no sympy (nor a worker)
    if num is not None:
        return num
    if not use_sympy:
        raise NeedsSympy(tex)
    return to_sympy(tex)


def valid(node: Node, use_sympy: bool) -> bool:
    """Every leaf of ``node`` parses (the checker moves on to the next candidate answer otherwise)."""
    if isinstance(node, Atom):
        return _value(node.tex, use_sympy) is not None
    if isinstance(node, Items | Cup):
        return all(valid(n, use_sympy) for n in (node.items if isinstance(node, Items) else node.parts))
    if isinstance(node, Span):
        return valid(node.lo, use_sympy) and valid(node.hi, use_sympy)
    if isinstance(node, Rel):
        # "17 \\bmod 5 = 2" states 2 even when the left side does not parse
        return (node.label or node.op == "=" or valid(node.lhs, use_sympy)) and valid(node.rhs, use_sympy)
    return True


def _scale(v: Num | sympy.Basic, by: int) -> Num | sympy.Basic:
    """``v / by`` (a percentage as a fraction); a decimal keeps its precision: 12.5% is 0.125, written to 3 places."""
    if isinstance(v, Num):
        shift = len(str(by)) - 1  # by is a power of ten
        return Num(v.value / by, None if v.decimals is None else v.decimals + shift, v.approx)
    return v / by


def _equal_values(gold: Num | sympy.Basic, pred: Num | sympy.Basic, rules: Rules = EXACT) -> bool:
    g, p = as_num(gold), as_num(pred)
    if _plain_pair(g, p):
        return numbers_match(g, p, rules)
    return sympy_equal(_to_sym(gold), _to_sym(pred), rules)


def _plain_pair(g: Num | None, p: Num | None) -> bool:
    """Both are plain real numbers and the precision policy decides: one is a decimal, or both are exact rationals
    (two exact irrationals are compared exactly by sympy instead)."""
    if g is None or p is None:
        return False
    return g.decimals is not None or p.decimals is not None or not (g.approx or p.approx)


def as_num(v: Num | sympy.Basic) -> Num | None:
    """``v`` as a plain real number: a parsed ``Num``; a bare sympy ``Float`` (its places from its shortest repr); a
    ``Rational``; or an exact real constant such as ``\\sqrt{2}``, approximated to 30 digits and marked ``approx``.
    None for anything else (symbols, complex values, decimals inside a larger expression, infinities)."""
    if isinstance(v, Num):
        return v
    if not isinstance(v, sympy.Expr) or v.free_symbols or not v.is_number:
        return None
    if isinstance(v, sympy.Float):
        return _float_num(float(v))
    if isinstance(v, sympy.Rational):
        return Num(Fraction(int(v.p), int(v.q)))
    if v.has(sympy.Float):
        return None
    try:
        re_part, im_part = v.evalf(30).as_real_imag()
        if im_part != 0:
            return None
        return Num(Fraction(str(re_part.evalf(30))), None, True)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None


def _float_num(x: float) -> Num | None:
    if not math.isfinite(x):
        return None
    d = Decimal(repr(x))
    return Num(Fraction(d), max(-d.as_tuple().exponent, 0))


def _to_sym(v: Num | sympy.Basic) -> sympy.Basic:
    if not isinstance(v, Num):
        return v
    if v.decimals is not None:
        return sympy.Float(str(float(v.value)), max(15, v.decimals + 2))
    return sympy.Rational(v.value.numerator, v.value.denominator)


@lru_cache(maxsize=4096)
def to_sympy(tex: str) -> sympy.Basic | None:
    """latex2sympy2_extended's grammar parser, with the size guards; None when it cannot parse ``tex``."""
    if len(tex) > MAX_TEX_CHARS or tex.count("{") > 60:
        return None
    try:
        expr = latex2sympy(tex, normalization_config=None, conversion_config=_CONFIG)
    except Exception:  # noqa: BLE001 - the ANTLR listener raises bare Exception for every syntax error
        return None
    if not isinstance(expr, sympy.Basic | sympy.MatrixBase) or too_big(expr):
        return None
    if isinstance(expr, sympy.MatrixExpr):  # "A + B", "A B" of explicit matrices: do the (size-checked) arithmetic
        expr = expr.doit()
    return expr


def magnitude(e: sympy.Basic) -> float:
    """An upper bound on log10|e| for numeric sub-trees, computed without evaluating anything."""
    if isinstance(e, sympy.Integer):
        return int(e).bit_length() * 0.302 + 1
    if isinstance(e, sympy.Rational):
        return magnitude(sympy.Integer(e.p)) + magnitude(sympy.Integer(e.q))
    if isinstance(e, sympy.Pow | sympy.MatPow):
        base, exp = magnitude(e.args[0]), magnitude(e.args[1])
        # log10|b^x| = x log10|b|: a root (|x| < 1) is no bigger than its base, whatever digits x is written with.
        return math.inf if exp > 7 else max(base, 1.0) * max(_abs_bound(e.args[1], exp), 1.0)
    if isinstance(e, sympy.factorial | sympy.gamma):
        n = magnitude(e.args[0])
        return math.inf if n > 6 else 10**n * n
    if not e.args:
        return 1.0
    sizes = [magnitude(a) for a in e.args]
    return sum(sizes) if isinstance(e, sympy.Mul) else max(sizes) + 1


def _abs_bound(x: sympy.Basic, mag: float) -> float:
    """An upper bound on |x|: its value when ``x`` is a constant (safe to evaluate: ``mag`` <= 7), else 10**mag."""
    if getattr(x, "is_number", False):
        try:
            v = abs(complex(x.evalf(15)))
        except (TypeError, ValueError, OverflowError):
            v = math.nan
        if math.isfinite(v):
            return v
    return 10**mag


def too_big(expr: sympy.Basic | sympy.MatrixBase) -> bool:
    items = list(expr) if isinstance(expr, sympy.MatrixBase) else [expr]
    return any(magnitude(sympy.sympify(x) if not isinstance(x, sympy.Basic) else x) > MAX_DIGITS for x in items)


def sympy_equal(a: sympy.Basic, b: sympy.Basic, rules: Rules = EXACT) -> bool:
    """``a`` (the gold) equals ``b``: matrices entry by entry, plain numbers by ``numbers_match``'s policy, other
    constants exactly (to 1e-12 relative), expressions in symbols as functions."""
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        if not (isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase)) or a.shape != b.shape:
            return False
        return all(sympy_equal(x, y, rules) for x, y in zip(a, b, strict=True))
    if not isinstance(a, sympy.Expr) or not isinstance(b, sympy.Expr):
        return a == b
    if a == b:
        return True
    if a.free_symbols or b.free_symbols:
        return _same_function(a - b)
    return _same_number(a, b, rules)


def _same_number(a: sympy.Expr, b: sympy.Expr, rules: Rules = EXACT) -> bool:
    g, p = as_num(a), as_num(b)
    if _plain_pair(g, p):
        return numbers_match(g, p, rules)  # the same policy as the fast path (0.33 in a matrix is 1/3)
    try:  # mpmath keeps any exponent: as floats 1/2004! and 1/2006! both underflow to 0.0
        mx, my = _mp(a), _mp(b)
    except (TypeError, ValueError):
        return False
    if rules.places is not None or rules.sig_figs is not None:
        if not (mpmath.isfinite(mx) and mpmath.isfinite(my)):
            return False
        place = requested_place(g or Num(Fraction(str(abs(mx))), None, True), rules)  # from the gold's magnitude
        return abs(mx - my) <= mpmath.mpf(10) ** -place / 2
    # Exact constants, or decimals inside a larger expression (10\sqrt{10.5}): equal up to the representation of
    # a binary float, never a tolerance that would excuse a wrong digit (relative: 2^-99 and 2^-98 differ).
    return abs(mx - my) <= mpmath.mpf("1e-12") * max(abs(mx), abs(my))


def _mp(e: sympy.Expr) -> mpmath.mpc:
    re_part, im_part = e.evalf(30).as_real_imag()
    return mpmath.mpc(mpmath.mpmathify(re_part.evalf(30)), mpmath.mpmathify(im_part.evalf(30)))


def _same_function(d: sympy.Expr) -> bool:
    """``d`` vanishes: exactly after expansion, or numerically at a few fixed points."""
    try:
        if sympy.expand(d) == 0:
            return True
        symbols = sorted(d.free_symbols, key=str)
        # Sums and products are functions of whole numbers: at n = 0.57 evalf would run Euler-Maclaurin (slow).
        discrete = d.has(sympy.Sum, sympy.Product)
        for k, p in enumerate(_POINTS):
            subs = {s: 3 + i + 2 * k if discrete else p + 0.37 * i + 0.11 * k for i, s in enumerate(symbols)}
            v = complex(d.evalf(20, subs=subs))
            if not math.isfinite(abs(v)) or abs(v) > 1e-8:
                return False
        return True
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError):
        return False


def _same_relation(gold: Rel, pred: Rel, use_sympy: bool, rules: Rules = EXACT) -> bool:
    """``a op b`` and ``c op d`` agree when (a-b)/(c-d) is a constant, positive for inequalities."""
    if not all(isinstance(n, Atom) for n in (gold.lhs, gold.rhs, pred.lhs, pred.rhs)):
        return False
    if not use_sympy:
        raise NeedsSympy("relation")
    parts = [to_sympy(n.tex) if n.tex else None for n in (gold.lhs, gold.rhs, pred.lhs, pred.rhs)]
    if any(p is None or not isinstance(p, sympy.Expr) for p in parts):
        return False
    d1, d2 = parts[0] - parts[1], parts[2] - parts[3]
    if d1 == 0 or d2 == 0:
        return d1 == d2
    try:
        ratio = sympy.cancel(d1 / d2)
        if ratio.free_symbols:
            return False
        r = complex(ratio.evalf())
    except (TypeError, ValueError, ZeroDivisionError):
        return False
    if gold.op == "=" or gold.op == "≠":
        return r != 0
    return r.imag == 0 and r.real > 0
