"""Finding the final answer in a completion: pure string work, no math.

``answer_candidates`` lists the strings that may hold the answer, best first; the checker uses the first one that
parses (so ``$\\sum...$ and $42$`` still yields ``42`` when the sum cannot be parsed). Priority:
``<answer>`` tags, the last ``\\boxed{}``/``\\fbox{}`` (adjacent boxes joined: ``\\boxed{1} and \\boxed{2}``),
"the answer is ...", delimited math (last first), then the last number in the text.

>>> answer_candidates("<think>2+2</think><answer>The answer is \\\\boxed{4}.</answer>")[0]
'4'
>>> answer_candidates(r"so \\(x = \\boxed{1}\\) and \\(\\boxed{-2}\\).")[0]
'1, -2'
>>> answer_candidates("We get 3 apples, then 12/4 more, so 6 in all.")[-1]
'6'
"""

from __future__ import annotations

import re

MAX_COMPLETION_CHARS = 100_000
"""Only the tail of longer completions is searched: the answer is at the end, and regexes stay cheap."""
MAX_ANSWER_CHARS = 1_000
"""Longer candidate answers are dropped: no real final answer is that long, and parsing cost grows with size."""

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)
_PHRASE_RE = re.compile(
    r"(?:final answer|the answer|answer|réponse)\s*(?:is|:|est|=)?\s*(?:[:：]\s*)?(?:\*\*)?", re.I
)
_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$([^$\n]+?)(?<!\\)\$", re.S)
_NUMBER_RE = re.compile(
    r"[-+]?(?:\\frac\{\d+\}\{\d+\}|\d+ \d+/\d+(?![\d/])|\d+(?:[.,]\d+)*(?:/\d+)?)(?:\s*(?:%|\\%))?"
)
_JOIN_RE = re.compile(r"^(?:[\s,;.$]|\\[,;!]|\\q?quad|\\text\{[^{}]*\}|\\\)|\\\(|\\\[|\\\]|[A-Za-z()]+)*$")
_SENTENCE_END_RE = re.compile(r"(?<!\d)\.(?:\s|$)|\.\s|\n|;\s|(?<=\$)\s*\.|\bI hope\b")


def balanced(text: str, start: int) -> int | None:
    """Index just past the brace closing the ``{`` at ``start - 1``, or None when unbalanced."""
    depth = 1
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\":
            continue
        if c == "{" and text[i - 1] != "\\":
            depth += 1
        elif c == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every ``\\boxed{...}``/``\\fbox{...}``, outermost only."""
    spans, pos = [], 0
    while (m := _BOX_RE.search(text, pos)) is not None:
        end = balanced(text, m.end())
        if end is None:
            break
        spans.append((m.start(), end, text[m.end() : end - 1]))
        pos = end
    return spans


def last_boxed(text: str) -> str | None:
    """Content of the last box, joined with the boxes just before it when only a few words separate them."""
    spans = boxed_spans(text)
    if not spans:
        return None
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        between = text[prev[1] : group[0][0]]
        # "\boxed{1} and \boxed{2}" is one answer; "\boxed{1} ... a paragraph ... \boxed{2}" is a correction.
        if len(between.split()) > 4 or not _JOIN_RE.match(between):
            break
        group.insert(0, prev)
    return ", ".join(c for _, _, c in group)


def after_phrase(text: str) -> list[str]:
    """What follows the last "answer is"/"answer:" up to the end of the sentence, when it looks like math."""
    matches = list(_PHRASE_RE.finditer(text))
    for m in reversed(matches):
        rest = text[m.end() :].lstrip()
        if not rest:
            continue
        math = _MATH_RE.match(rest)
        if math:
            return [next(g for g in math.groups() if g is not None)]
        end = _SENTENCE_END_RE.search(rest)
        piece = rest[: end.start()] if end else rest
        piece = piece.strip().rstrip("*").strip()
        if piece and (piece[0].isdigit() or piece[0] in "-+(\\[{.$"):
            return [piece]
    return []


def math_segments(text: str) -> list[str]:
    """Delimited math, last first."""
    found = [next(g for g in m.groups() if g is not None) for m in _MATH_RE.finditer(text)]
    return [s for s in reversed(found) if s.strip()]


def last_number(text: str) -> list[str]:
    found = _NUMBER_RE.findall(text)
    return [found[-1]] if found else []


def answer_region(text: str) -> str:
    """The part of a completion that holds the answer: after ``</think>``, inside the last ``<answer>``."""
    text = text[-MAX_COMPLETION_CHARS:]
    head, sep, tail = text.rpartition("</think>")
    if sep and tail.strip():
        text = tail
    tags = _ANSWER_TAG_RE.findall(text)
    if tags and tags[-1].strip():
        text = tags[-1]
    return text


def answer_candidates(text: str) -> list[str]:
    """Candidate answer strings, best first (see the module docstring)."""
    region = answer_region(text)
    out: list[str] = []
    boxed = last_boxed(region)
    if boxed is not None:
        out.append(boxed)
    out += after_phrase(region)
    out += math_segments(region)
    if len(region) <= 120 and "$" not in region:
        out.append(region)  # a bare answer: "x^2 + 2*x + 1", "(1,4.5)", "4 4/9"
    out += last_number(region)
    seen, unique = set(), []
    for c in out:
        c = c.strip()
        if c and c not in seen and len(c) <= MAX_ANSWER_CHARS:
            seen.add(c)
            unique.append(c)
    return unique
