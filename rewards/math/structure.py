"""Splitting a normalized answer into typed parts: lists, sets, tuples, intervals, relations, text and choices.

Only the leaves (``Atom``) are LaTeX math; they are converted to sympy later, in the guarded worker. Everything
here is string work, so it runs in-process and its results are cached and pickled to workers.

>>> node = parse_answer(r"x \\in [-2, 7)")
>>> node.label, node.rhs.lo, node.rhs.hi_closed
(True, Atom(tex='-2', pct=False), False)
>>> parse_answer(r"p=5,q=2;p=7,q=2").kind, parse_choice("(C) Cecile")
('list', Choice(letter='C'))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from rewards.math.normalize import normalize
from rewards.math.numbers import parse_number

MAX_DEPTH = 6


@dataclass(frozen=True)
class Atom:
    tex: str
    pct: bool = False
    """Written with a percent sign: ``28%`` matches 0.28, and 28 when the gold is the percentage."""


@dataclass(frozen=True)
class Text:
    s: str


@dataclass(frozen=True)
class Choice:
    letter: str


@dataclass(frozen=True)
class Items:
    items: tuple[Node, ...]
    kind: str
    """``list`` (comma-separated, order-free), ``set`` (``\\{...\\}``) or ``tuple`` (parenthesised, ordered)."""
    names: tuple[str, ...] | None = None
    """For ``p=5, q=2``: the unknown each item gives (``("p", "q")``), so the pairs may come in any order."""


@dataclass(frozen=True)
class Span:
    lo: Node
    hi: Node
    lo_closed: bool
    hi_closed: bool


@dataclass(frozen=True)
class Cup:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Rel:
    lhs: Node
    op: str
    """``=``, ``<``, ``≤`` or ``≠`` (``>`` and ``≥`` are flipped on parse)."""
    rhs: Node
    label: bool
    """``lhs`` is a name (``x``, ``f(x)``, ``|AB|``, ``A:B``): ``x = 5`` then means the value 5."""


Node = Union[Atom, Text, Choice, Items, Span, Cup, Rel]  # noqa: UP007 - a runtime alias; `|` needs 3.10 types

_CHOICE_RE = re.compile(r"\(?([A-E])\)?(?:[\s.:]+[A-Za-z][\s\S]*)?")
_LABEL_RE = re.compile(r"[A-Za-z|:(),\s_{}\\']*(?:_\{?\w+\}?[A-Za-z|:(),\s_{}\\']*)*")
_WORD_RE = re.compile(r"(?<![A-Za-z\\])[A-Za-z]{2,}(?:'[a-z]+)?(?![A-Za-z])")
_MATH_WORDS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp lim max min gcd lcm mod deg det".split()
)
_OPEN, _CLOSE = "([{", ")]}"
_FLIP = {">": "<", "≥": "≤"}


def top_level_split(s: str, seps: re.Pattern[str]) -> list[str]:
    """Split on ``seps`` where no bracket is open (``[0,1)`` counts as balanced)."""
    parts, depth, last, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth = max(depth - 1, 0)
        elif depth == 0:
            m = seps.match(s, i)
            if m and m.end() > i:
                parts.append(s[last:i])
                last = i = m.end()
                continue
        i += 1
    parts.append(s[last:])
    return parts


def closing(s: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (-1 when unbalanced)."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] in _OPEN:
            depth += 1
        elif s[i] in _CLOSE:
            depth -= 1
            if depth == 0:
                return i
    return -1


def is_label(s: str) -> bool:
    """A name rather than a quantity: no digits outside subscripts, no arithmetic."""
    s = re.sub(r"_\{?\w+\}?", "", s.strip())
    s = re.sub(r"\\frac\{([A-Za-z]+)\}\{([A-Za-z]+)\}", r"\1", s)
    return bool(s) and not re.search(r"[\d+\-*/^=]", s) and bool(_LABEL_RE.fullmatch(s))


def parse_choice(s: str) -> Choice | None:
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s).strip()
    m = _CHOICE_RE.fullmatch(s)
    return Choice(m.group(1)) if m else None


def parse_answer(s: str) -> Node | None:
    """The structure of one answer string, or None when it is empty or prose."""
    if re.search(r"\d[ \t]*\r?\n\s*\d", s.strip()):
        return None  # "11\n5/6" is two lines, not the mixed number 11 5/6
    s = normalize(s)
    if not s:
        return None
    if parse_number(s) is not None:  # "7,425,000" and "1000,99" are numbers, not lists
        return Atom(s)
    return _parse(s, 0)


_LIST_SEPS = re.compile(r";|\s+(?:and|or)\s+|(?<=[\d)}\]])\s*or\s*(?=[-(\\\dA-Za-z])")
_COMMA = re.compile(r",")
_EQ = re.compile(r"=")
_INEQ = re.compile(r"≤|≥|≠|<|>")
_IN = re.compile(r"\\in(?![a-zA-Z])")
_APPROX = re.compile(r"\\approx(?![a-zA-Z])|≈")
_CUP = re.compile(r"\\cup(?![a-zA-Z])|∪")


def _parse(s: str, depth: int) -> Node | None:
    s = s.strip().strip(",;").strip()
    if not s or depth > MAX_DEPTH:
        return None
    groups = [g for g in top_level_split(s, _LIST_SEPS) if g.strip()]
    if len(groups) > 1:
        nodes = [_parse_group(g, depth) for g in groups]
        # "21, 16 or 11" is one list, not a list holding a list
        flat = [x for n in nodes for x in (n.items if _is_plain_list(n) else (n,))]
        return _items(flat, "list")
    return _parse_group(s, depth)


def _parse_group(s: str, depth: int) -> Node | None:
    s = re.sub(r"^(?:and|or)\s+", "", s.strip())
    pieces = [p for p in top_level_split(s, _COMMA) if p.strip()]
    if len(pieces) > 1 and re.fullmatch(r"\s*(?:\.\.\.|\\[lc]?dots)\s*", pieces[-1]):
        return Items((*(_parse_single(p, depth) for p in pieces[:-1]), Text("...")), "list")
    if len(pieces) == 1:
        return _parse_single(pieces[0], depth)
    nodes = [_parse_single(p, depth) for p in pieces]
    if all(isinstance(n, Rel) and n.label and n.op == "=" for n in nodes):
        names = tuple(_name(n.lhs) for n in nodes)
        # "p=5, q=2" is the pair (5, 2), and also the assignment {p: 5, q: 2}
        return Items(tuple(n.rhs for n in nodes), "tuple", names if all(names) else None)
    return _items(nodes, "list")


def _is_plain_list(node: Node | None) -> bool:
    return isinstance(node, Items) and node.kind == "list" and node.names is None


def _name(node: Node) -> str:
    """``a_{37}`` -> ``a_37``: the unknown a labelled value names, spelled one way."""
    return re.sub(r"[\s{}]", "", node.tex) if isinstance(node, Atom) else ""


def _items(nodes: list[Node | None], kind: str) -> Node | None:
    if any(n is None for n in nodes):
        return None
    return Items(tuple(nodes), kind)


def _parse_single(s: str, depth: int) -> Node | None:
    s = s.strip()
    if not s:
        return None
    d = depth + 1
    parts = top_level_split(s, _APPROX)
    if len(parts) > 1:  # "x \approx 11" means 11; "1/3 \approx 0.33" means 1/3
        return _parse_single(parts[1] if is_label(parts[0]) else parts[0], d)
    parts = top_level_split(s, _EQ)
    if len(parts) > 1:
        lhs, rhs = parts[0].strip(), parts[-1].strip()
        label = is_label(lhs) or len(parts) > 2
        lnode, rnode = _parse(lhs, d) if lhs else None, _parse(rhs, d)
        if rnode is None:
            return None
        return Rel(lnode or Atom(""), "=", rnode, label)
    parts = top_level_split(s, _IN)
    if len(parts) == 2 and is_label(parts[0]):
        return Rel(Atom(parts[0].strip()), "=", _parse(parts[1], d), True) if _parse(parts[1], d) else None
    return _parse_relation(s, d)


def _parse_relation(s: str, d: int) -> Node | None:
    ops = [m.group() for m in _INEQ.finditer(s)]
    parts = top_level_split(s, _INEQ)
    if len(parts) == 3 and len(ops) == 2 and is_label(parts[1]) and ops[0] == ops[1] and ops[0] in "<≤>≥":
        lo, hi = (parts[0], parts[2]) if ops[0] in "<≤" else (parts[2], parts[0])
        closed = ops[0] in "≤≥"
        lo_n, hi_n = _parse(lo, d), _parse(hi, d)
        if not (lo_n and hi_n):
            return None
        if re.fullmatch(r"\|[^|]+\|", parts[1].strip()):
            return _abs_span(lo_n, hi_n, closed)
        return Span(lo_n, hi_n, closed, closed)
    if len(parts) == 2 and len(ops) == 1:
        return _rel(parts[0], ops[0], parts[1], d)
    if len(parts) > 2 and len(ops) == len(parts) - 1 and (set(ops) <= set("<≤") or set(ops) <= set(">≥")):
        # "f(2) < f(1) < f(4)": a chain is its links, in order (and "c > b > a" is "a < b < c")
        if ops[0] in _FLIP:
            parts, ops = parts[::-1], [_FLIP[op] for op in reversed(ops)]
        links = [_rel(a, op, b, d) for a, op, b in zip(parts, ops, parts[1:], strict=False)]
        return _items(links, "tuple")
    if len(parts) > 1:
        return None
    return _parse_set(s, d)


def _rel(lhs_s: str, op: str, rhs_s: str, d: int) -> Rel | None:
    lhs, rhs = _parse(lhs_s, d), _parse(rhs_s, d)
    if lhs is None or rhs is None:
        return None
    if op in _FLIP:
        lhs, rhs, op = rhs, lhs, _FLIP[op]
    return Rel(lhs, op, rhs, False)


def _abs_span(lo: Node, hi: Node, closed: bool) -> Node:
    """``a <= |x| <= b`` (0 <= a) is ``[-b, -a] ∪ [a, b]``, and ``[-b, b]`` when a is 0."""
    num = parse_number(lo.tex) if isinstance(lo, Atom) else None
    if num is None or num.value < 0 or not isinstance(hi, Atom):
        return Span(lo, hi, closed, closed)
    neg_hi = Atom(_negate(hi.tex))
    if num.value == 0:
        return Span(neg_hi, hi, closed, closed)
    return Cup((Span(neg_hi, Atom(_negate(lo.tex)), closed, closed), Span(lo, hi, closed, closed)))


def _negate(tex: str) -> str:
    return tex[1:] if tex.startswith("-") and parse_number(tex) else f"-{tex}" if parse_number(tex) else f"-({tex})"


def _parse_set(s: str, d: int) -> Node | None:
    cups = top_level_split(s, _CUP)
    if len(cups) > 1:
        nodes = [_parse(c, d) for c in cups]
        return Cup(tuple(nodes)) if all(nodes) else None
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = _parse(s[2:-2], d)
        if inner is None:
            return None
        return Items(inner.items if isinstance(inner, Items) else (inner,), "set")
    if s[0] in "([{" and s[-1] in ")]}" and closing(s, 0) == len(s) - 1:
        return _parse_bracketed(s, d)
    return _parse_leaf(s, d)


def _parse_bracketed(s: str, d: int) -> Node | None:
    inner = s[1:-1]
    if s[0] == "{" and s[-1] == "}":
        return _parse(inner, d)
    pieces = top_level_split(inner, re.compile(r"[,;]"))
    if len(pieces) == 1:
        return _parse(inner, d) if s[0] == "(" and s[-1] == ")" else _parse_leaf(s, d)
    nodes = [_parse(p, d) for p in pieces]
    if any(n is None for n in nodes):
        return None
    if len(nodes) == 2 and not (s[0] == "(" and s[-1] == ")"):
        return Span(nodes[0], nodes[1], s[0] == "[", s[-1] == "]")
    return Items(tuple(nodes), "tuple")


def _parse_leaf(s: str, d: int) -> Node | None:
    s = s.strip()
    pm = s.split("\\pm")
    if len(pm) == 2:
        a, b = pm
        return Items((Atom(f"{a}+{b}"), Atom(f"{a}-{b}")), "set") if b.strip() else None
    text = re.fullmatch(r"\\text\s*\{([^{}]*)\}", s)
    if text:
        inner = text.group(1).strip()
        return parse_answer(inner) if re.search(r"\d", inner) else _text_or_choice(inner)
    if re.fullmatch(r"[A-Za-z][A-Za-z ]+", s) and len(s) > 1 and not re.fullmatch(r"[a-z]{1,2}", s):
        return _text_or_choice(s)
    if is_prose(s):
        return None  # prose, not an answer
    words = s.split()
    if len(words) > 1 and all(parse_number(w) and (i == 0 or w[0] not in "+-") for i, w in enumerate(words)):
        return None  # "4 4/9 2" is three numbers side by side, not their product
    pct = False
    m = re.fullmatch(r"(.*?)\s*(?:\\%|%|percent(?:age)?|pct)", s)
    if m:
        s, pct = m.group(1).strip(), True
    return Atom(s, pct) if s else None


def is_prose(s: str) -> bool:
    """Two or more words that are not function names ("it's not 10", "the volume"), and no LaTeX commands."""
    if re.search(r"\\[a-zA-Z]", s):
        return False
    return sum(w.lower() not in _MATH_WORDS for w in _WORD_RE.findall(s)) >= 2


def _text_or_choice(s: str) -> Node:
    return parse_choice(s) or Text(re.sub(r"\s+", "", s).lower())
