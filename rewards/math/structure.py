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
_WORDS_RE = re.compile(r"[A-Za-z]{3,}\s+[A-Za-z]{3,}")
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
        return _items([_parse_group(g, depth) for g in groups], "list")
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
        return _items([n.rhs for n in nodes], "tuple")  # "p=5, q=2" is the pair (5, 2)
    return _items(nodes, "list")


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
        return Span(lo_n, hi_n, closed, closed) if lo_n and hi_n else None
    if len(parts) == 2 and len(ops) == 1:
        lhs, rhs = _parse(parts[0], d), _parse(parts[1], d)
        if lhs is None or rhs is None:
            return None
        op = ops[0]
        if op in _FLIP:
            lhs, rhs, op = rhs, lhs, _FLIP[op]
        return Rel(lhs, op, rhs, False)
    if len(parts) > 1:
        return None
    return _parse_set(s, d)


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
    if _WORDS_RE.search(s.replace("\\", " \\")) and not re.search(r"\\[a-zA-Z]", s):
        return None  # prose, not an answer
    pct = False
    m = re.fullmatch(r"(.*?)\s*(?:\\%|%|percent(?:age)?|pct)", s)
    if m:
        s, pct = m.group(1).strip(), True
    return Atom(s, pct) if s else None


def _text_or_choice(s: str) -> Node:
    return parse_choice(s) or Text(re.sub(r"\s+", "", s).lower())
