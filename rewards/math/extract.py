"""Finding the final answer in a completion: pure string work, no math (policy tables: docs/math_checking.md).

Only the text before a chat-turn token (``<|im_start|>``), after ``</think>`` and inside the last ``<answer>`` is
searched. ``final_answer`` gives the readings of the answer, best first (the checker uses the first that parses):

1. An explicit final answer, the last stated of: the last ``\\boxed{}``/``\\fbox{}`` (boxes that belong together
   joined: ``\\boxed{1} and \\boxed{2}``; a box after a correction, "Wait, no: \\boxed{7}", replaces the earlier
   ones), the last "the answer is ..." (an answer sentence in prose, "Final Answer: The largest $n$ is 34.", gives
   itself, then its first quantity), or a bare number closing the text after them ("... I hope. 42"); else the
   ``<answer>`` block itself. When it is too long, nested too deep, code-like or does not parse, the completion is
   wrong: nothing else in the text is consulted.
2. Only without any explicit answer: a number stated after the last delimited math ("... $d = 90/n$. So there
   are 12 sequences."), delimited math, last first, a short bare answer (the whole text), the last number outside
   formulas (digits inside ``$\\sum_{k=0}^n k$`` are not an answer).

>>> answer_candidates("<think>2+2</think><answer>The answer is \\\\boxed{4}.</answer>")[0]
'4'
>>> answer_candidates(r"so \\(x = \\boxed{1}\\) and \\(\\boxed{-2}\\).")[0]
'1, -2'
>>> answer_candidates("We get 3 apples, then 12/4 more, so 6 in all.")[-1]
'6'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_COMPLETION_CHARS = 100_000
"""Only the tail of longer completions is searched: the answer is at the end, and regexes stay cheap."""
MAX_ANSWER_CHARS = 1_000
"""A longer explicit final answer is rejected ("too long"; no real final answer is that long, and parsing cost grows
with size); longer fallback candidates are dropped."""
MAX_NESTING = 12
"""Brackets nested deeper than this reject an explicit final answer ("too deep"): parsers recurse on them."""
MAX_BOX_UNWRAP = 2
"""``\\boxed{\\boxed{3}}`` is unwrapped this many levels; deeper boxes stay and are too deep or fail to parse."""

_BOX_RE = re.compile(r"\\{1,2}(?:boxed|fbox)\s*\{")  # "\\boxed{": a doubled escape is still a box
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)
_PHRASE_RE = re.compile(r"(?:final answer|the answer|answer|réponse)\s*(?:is|:|est|=)?\s*(?:[:：]\s*)?(?:\*\*)?", re.I)
_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$([^$\n]+?)(?<!\\)\$", re.S)
_NUMBER_RE = re.compile(
    r"[-+]?(?:\\frac\{\d+\}\{\d+\}|\d+ \d+/\d+(?![\d/])|\d+(?:[.,]\d+)*(?:/\d+)?)(?:\s*(?:%|\\%))?"
)
_JOIN_RE = re.compile(r"^(?:[\s,;.$]|\\[,;!]|\\q?quad|\\text\{[^{}]*\}|\\\)|\\\(|\\\[|\\\]|[A-Za-z()]+)*$")
_FORMULA_RE = re.compile(r"\\[A-Za-z]|[\^_{}]")
_TURN_RE = re.compile(r"<\|[a-z_]{2,20}\|>")
_STATES_RE = re.compile(r"is|:|est|=", re.I)
_ASSIGN_TAIL_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*$")
_SYMBOLS_RE = re.compile(r"[^\w\s=<>\\{}]*")
_TEXT_WRAP_RE = re.compile(r"\\text\s*\{([^{}]*)\}")
# Program text, not math: Python keywords and calls, code fences, dunders, "==". A prime (f'(x)) and "!=" stay math.
_CODE_RE = re.compile(
    r"```|__\w+__|==|\b(?:def|lambda|import|return|elif|while)\b|(?<![\\\w])(?:print|range|len|eval|exec|int|str|"
    r"float|sum|open|input|sorted|list|dict)\s*\(|\bfor\s+\w+\s+in\b|\w\.\w+\("
)
MAX_PHRASES = 20
"""Only the last few "answer is" phrases are looked at (a degenerate completion may repeat one thousands of times)."""
MAX_SENTENCE_CHARS = 200
"""An answer sentence ("Final Answer: The volume of $ABCH$ is 120.") is searched for a quantity up to this long."""
_CORRECTION_RE = re.compile(
    r"\b(?:no|not|nope|wait|actually|sorry|oops|mistake|wrong|error|incorrect|correct(?:ed|ion)?|instead|rather|"
    r"hmm|recheck|re-?check(?:ing)?|fix|fixed|scratch|but|however|so|thus|hence|therefore|final(?:ly)?|answer)\b",
    re.I,
)
_QUOTES_RE = re.compile(r'^\\?["“]\s*|\s*\\?["”]$')
_CLOSING_RE = re.compile(r"(?:[.!?]\s+|\n\s*)\$?\s*([-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?)\s*\$?\s*$")
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


def last_boxed_span(text: str) -> tuple[int, int, str] | None:
    """(start, end, content) of the last box, joined with the boxes just before it that belong to it."""
    spans = boxed_spans(text)
    if not spans:
        return None
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        # "\boxed{1} and \boxed{2}" is one answer; "\boxed{1} ... a paragraph ... \boxed{2}" is a correction.
        if not _joins(text[prev[1] : group[0][0]]):
            break
        group.insert(0, prev)
    return group[0][0], group[-1][1], ", ".join(c for _, _, c in group)


def last_boxed(text: str) -> str | None:
    span = last_boxed_span(text)
    return span[2] if span else None


def _joins(between: str) -> bool:
    """Whether two boxes with ``between`` between them give one answer."""
    between = _ASSIGN_TAIL_RE.sub("", between)  # "\( y_1 = \boxed{..} \) and \( y_2 = \boxed{..} \)"
    if _SYMBOLS_RE.fullmatch("".join(between.split())):  # "\boxed{1}, \boxed{2}", "\boxed{1} ++ \boxed{2}"
        return True
    words = _TEXT_WRAP_RE.sub(r" \1 ", between).split()  # "\text{ for part (a) and }" is four words
    if _CORRECTION_RE.search(between):
        return False  # "\boxed{5}. Wait, no: \boxed{7}" corrects the first box: the last one is the answer
    return len(words) <= 4 and bool(_JOIN_RE.match(between))


def open_boxed(text: str) -> str | None:
    """What follows a last ``\\boxed{`` that is never closed (a gold cut short), or None."""
    found = list(_BOX_RE.finditer(text))
    if not found or balanced(text, found[-1].end()) is not None:
        return None
    return text[found[-1].end() :].rstrip().rstrip("$").strip() or None


def phrase_answer(text: str) -> tuple[int, list[str]] | None:
    """Where the last "answer is"/"answer:" stands, and what it states: the math or number just after it, or,
    after "Final Answer: The largest $n$ is 34.", the sentence itself then its first quantity."""
    for m in list(_PHRASE_RE.finditer(text))[::-1][:MAX_PHRASES]:
        rest = text[m.end() : m.end() + MAX_ANSWER_CHARS].lstrip()
        if not rest:
            continue
        math = _MATH_RE.match(rest)
        if math:
            return m.start(), [next(g for g in math.groups() if g is not None)]
        end = _SENTENCE_END_RE.search(rest)
        piece = (rest[: end.start()] if end else rest).strip().rstrip("*").strip()
        piece = _QUOTES_RE.sub("", piece)  # 'The final answer is \"$12$ and $13$\".'
        if not piece:
            continue
        if piece[0].isdigit() or piece[0] in "-+(\\[{.$":
            return m.start(), [piece]
        if _STATES_RE.search(m.group()) and len(piece) <= MAX_SENTENCE_CHARS:
            quantity = first_quantity(piece)
            if quantity or len(piece.split()) <= 3:  # "The answer is sqrt(2)", "The answer is odd."
                return m.start(), [piece, *quantity]
    return None


def after_phrase(text: str) -> list[str]:
    found = phrase_answer(text)
    return found[1] if found else []


def first_quantity(sentence: str) -> list[str]:
    """The first delimited math holding a digit, or number, in ``sentence`` ("... $f(x)$ is 19" -> 19)."""
    spans = _math_spans(sentence)
    found = [(a, c) for a, _, c in spans if re.search(r"\d", c)]
    number = _NUMBER_RE.search(_blank(sentence, spans))
    if number:
        found.append((number.start(), number.group()))
    return [min(found)[1]] if found else []


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    found = ((m.start(), m.end(), next(g for g in m.groups() if g is not None)) for m in _MATH_RE.finditer(text))
    return [f for f in found if f[2].strip()]


def _blank(text: str, spans: list[tuple[int, int, str]]) -> str:
    """``text`` with the spans replaced by spaces (positions kept)."""
    out, pos = [], 0
    for a, b, _ in spans:
        out += [text[pos:a], " " * (b - a)]
        pos = b
    return "".join(out) + text[pos:]


def math_segments(text: str) -> list[str]:
    """Delimited math, last first."""
    return [c for _, _, c in reversed(_math_spans(text))]


def answer_region(text: str) -> str:
    """The part of a completion that holds the answer: before any chat-turn token (``<|im_start|>``: what follows
    is a turn the model made up), after ``</think>``, inside the last ``<answer>``."""
    return answer_block(text)[0]


def answer_block(text: str) -> tuple[str, bool]:
    """``answer_region`` and whether it is the content of an ``<answer>`` block (an explicit final answer)."""
    text = next((t for t in _TURN_RE.split(text) if t.strip()), "")
    text = text[-MAX_COMPLETION_CHARS:]
    head, sep, tail = text.rpartition("</think>")
    if sep and tail.strip():
        text = tail
    tags = _ANSWER_TAG_RE.findall(text)
    if tags and tags[-1].strip():
        return tags[-1], True
    return text, False


@dataclass(frozen=True)
class Final:
    """What a completion gives as its answer (``final_answer``)."""

    candidates: tuple[str, ...]
    """Readings of the answer, best first; the checker takes the first that parses."""
    explicit: bool
    """A box, an "answer is" statement or an ``<answer>`` block gave them: when none parses, the completion is
    wrong, and no other number in the text is consulted."""
    problem: str | None = None
    """Why the explicit answer is rejected before any parsing: "too long", "too deep" or "code-like"."""


def final_answer(text: str) -> Final:
    """The completion's final answer (see the module docstring and docs/math_checking.md).

    >>> final_answer("\\\\boxed{5}. Wait, that is wrong: it is \\\\boxed{7}.").candidates
    ('7',)
    >>> final_answer("\\\\boxed{" + "+".join(["1"] * 2000) + "} so 3").problem
    'too long'
    >>> final_answer("<answer>for i in range(3): print(i)</answer>").problem
    'code-like'
    """
    region, tagged = answer_block(text)
    box, phrase = last_boxed_span(region), phrase_answer(region)
    closing = closing_number(region)
    last = max(box[1] if box else -1, phrase[0] if phrase else -1)
    if closing is not None and (box or phrase) and closing[0] >= last:
        readings = [closing[1]]  # "Final answer is $\sum...$. I hope. 42": the last thing stated is final
    elif box and not (phrase and phrase[0] >= box[1]):  # the later of the two is final
        readings = [unbox(box[2])]
    elif phrase:
        readings = phrase[1]
    elif tagged:
        readings = block_readings(region)
    else:
        return Final(tuple(fallback_candidates(region)), False)
    readings = [r.strip() for r in readings if r.strip()]
    if not readings:
        return Final((), True, "empty")
    return Final(tuple(readings), True, answer_problem(readings[0]))


def closing_number(region: str) -> tuple[int, str] | None:
    """(start, text) of a bare number that ends the text as its own sentence or line ("... I hope. 42", "\\n$1/2$").

    It restates the final answer after the box or "answer is" statement. A list marker ("... Check:\\n1.") is not
    one: the number may not end with a period."""
    offset = max(len(region) - MAX_SENTENCE_CHARS, 0)  # the tail only: a regex over 100k newlines is quadratic
    m = _CLOSING_RE.search(region, offset)
    return (m.start(1), m.group(1)) if m else None


def unbox(content: str) -> str:
    """``\\boxed{\\boxed{3}}`` is 3: a box whose whole content is another box is unwrapped (a few levels only)."""
    for _ in range(MAX_BOX_UNWRAP):
        inner = boxed_spans(content.strip())
        if len(inner) != 1 or inner[0][0] != 0 or inner[0][1] != len(content.strip()):
            break
        content = inner[0][2]
    return content


def answer_problem(answer: str) -> str | None:
    """Why an explicit answer is rejected unparsed: too long, nested too deep or code-like (else None)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return "too long"
    depth = deepest = 0
    for c in answer:
        depth += c in "({[" or -(c in ")}]")
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        return "too deep"
    if _CODE_RE.search(answer):
        return "code-like"
    return None


def block_readings(block: str) -> list[str]:
    """An ``<answer>`` block without a box or answer statement: itself, the one formula it holds, or the one
    quantity of a short sentence ("<answer>There are 12 eggs.</answer>"; two quantities are no answer)."""
    out = [block]
    spans = _math_spans(block)
    if len(spans) == 1 and not _blank(block, spans).strip(" \t\n.,;:"):
        out.append(spans[0][2])
    elif len(block) <= MAX_SENTENCE_CHARS:
        blanked = _blank(block, spans)
        quantities = [c for _, _, c in spans if re.search(r"\d", c)] + _NUMBER_RE.findall(blanked)
        if len(quantities) == 1:
            out.append(quantities[0])
    return out


def answer_candidates(text: str) -> list[str]:
    """Candidate answer strings, best first (see the module docstring)."""
    return list(final_answer(text).candidates)


def fallback_candidates(region: str) -> list[str]:
    """Where a completion states no explicit final answer: delimited math, the number after it, a short bare text,
    the last number outside formulas."""
    out: list[str] = []
    spans = _math_spans(region)
    # Numbers inside a formula are not answers ("$\sum_{k=0}^n ...$" does not say 0 when it fails to parse).
    number = list(_NUMBER_RE.finditer(_blank(region, [s for s in spans if _FORMULA_RE.search(s[2])])))
    if spans and number and number[-1].start() >= spans[-1][1]:
        out.append(number[-1].group())  # "... $d = 90/n$. So there are 12 sequences.": the number comes last
    out += [c for _, _, c in reversed(spans)]
    bare = len(region) <= 120 and "$" not in region
    if bare:
        out.append(region)  # a bare answer: "x^2 + 2*x + 1", "(1,4.5)", "4 4/9"
    # A short bare formula's own digits are no answer: "\forall x>0, f(x) = 0" does not state 0 when sympy rejects
    # it. (Prose around formulas, "所以 ... (\frac{2}{5}) 吨", still gives its last number.)
    if number and not (bare and region.isascii() and _FORMULA_RE.search(region)):
        out.append(number[-1].group())
    seen, unique = set(), []
    for c in out:
        c = c.strip()
        if c and c not in seen and len(c) <= MAX_ANSWER_CHARS:
            seen.add(c)
            unique.append(c)
    return unique
