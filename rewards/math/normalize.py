"""LaTeX/text clean-up applied to an extracted answer before it is split into parts (pure string work).

>>> normalize(r"\\left( \\dfrac12 \\right)\\text{ cm}^2.")
'( \\\\frac{1}{2} )'
>>> normalize("11,\\\\! 111,\\\\! 100"), normalize(r"90^\\circ"), normalize(r"\\$16386.17")
('11,111,100', '90', '16386.17')
"""

from __future__ import annotations

import re

_CONTROL = {"\x0c": "\\f", "\x07": "\\a", "\x08": "\\b", "\x0b": "\\v"}
_SUBS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\t(?=[a-zA-Z])"), r"\\t"),
    # \bigl/\bigr stay: the grammar rejects them, so "$\sum\bigl(k\bigr)$ ... 42" falls back to 42 as math-verify does.
    (re.compile(r"\\(?:left|right)(?![a-zA-Z])\s*\.?"), ""),
    (re.compile(r"\s*(?:percentage|percent|pct)\b"), "%"),
    (re.compile(r"(?<![\\a-zA-Z])sqrt\s*(?=\()"), r"\\sqrt"),
    (re.compile(r"(\d),\\!\s*(?=\d{3})"), r"\1,"),
    (re.compile(r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d)|\{,\}"), ","),  # "14{,}916", "14 {, }916"
    (re.compile(r",\s*\.\.\.(?!\.)"), r", \\ldots"),  # "1, 2, 3, ..." goes on: keep the dots a list item
    (re.compile(r"\\[!]"), ""),
    (re.compile(r"(?<!\\)\\[,;: ]|~|\\q?quad"), " "),
    (re.compile(r"\\[dtc]frac"), r"\\frac"),
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\d)\s*(?=\{)"), r"\\frac{\1}"),
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*([\da-z])"), r"\\frac\1{\2}"),
    (re.compile(r"\\sqrt\s*(\d+|[a-z])"), r"\\sqrt{\1}"),
    (re.compile(r"\\sqrt\s*\(([^()]*)\)"), r"\\sqrt{\1}"),
    (re.compile(r"\\(?:displaystyle|limits|nolimits)(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:mathrm|mathbf|mathit|boldsymbol|mathsf|operatorname)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\(?:textbf|textnormal|mbox|textit|textrm|texttt)\s*\{"), r"\\text{"),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree"), ""),
    (re.compile(r"\\text\{\s*(and|or)\s*\}"), r" \1 "),
    (re.compile(r"\\leqslant|\\leq|\\le(?![a-zA-Z])|<="), "≤"),
    (re.compile(r"\\geqslant|\\geq|\\ge(?![a-zA-Z])|>="), "≥"),
    (re.compile(r"\\neq|\\ne(?![a-zA-Z])|!="), "≠"),
    (re.compile(r"\\lt(?![a-zA-Z])"), "<"),
    (re.compile(r"\\gt(?![a-zA-Z])"), ">"),
    (re.compile(r"\\\$|\$"), ""),
    (re.compile(r"\+\s*\\infty"), r"\\infty"),
    (re.compile(r"\s+"), " "),
]
_TRAILING_RE = re.compile(r"(?:\s|[.,;:]|\\\\?$|\\$)+$")
_TEXT_RE = re.compile(r"\\text\s*\{([^{}]*)\}")
_UNIT_WORDS_RE = re.compile(r"([^a-zA-Z\\]*\d[^a-zA-Z\\]*?)\s*(?:[a-zA-Z]{2,}\s*)+(?:\^\s*\{?\d\}?|[²³])?")
_NONASCII_TAIL_RE = re.compile(r"(?<=\d)\s*(?:m²|€|£|¥|円|元)$")


def fix_escapes(s: str) -> str:
    """Undo lost escapes: a form feed where ``\\f`` was meant, ``\\\\sqrt`` written for ``\\sqrt``."""
    for bad, good in _CONTROL.items():
        s = s.replace(bad, good)
    if "\\begin" not in s:
        s = re.sub(r"(?<!\\)\\\\(?=[a-zA-Z{}])", r"\\", s)
    return s


def normalize(s: str) -> str:
    s = fix_escapes(s)
    for pattern, repl in _SUBS:
        s = pattern.sub(repl, s)
    s = strip_units(_TRAILING_RE.sub("", s).strip())
    return _TRAILING_RE.sub("", s).strip()


def strip_units(s: str) -> str:
    """Drop ``\\text{...}`` words and unit words after a number (``15\\text{ cm}^2``, ``125 miles``)."""
    without = _TEXT_RE.sub(" ", s).strip()
    if without != s and re.search(r"\d", without):
        s = re.sub(r"\^\s*\{?\d\}?\s*$", "", without).strip() if re.search(r"\\text\s*\{[^{}]*\}\s*\^", s) else without
    s = _NONASCII_TAIL_RE.sub("", s)
    m = _UNIT_WORDS_RE.fullmatch(s)
    if m and not re.search(r"\b(?:and|or)\b", s):
        s = m.group(1)
    return s.strip()
