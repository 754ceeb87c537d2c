"""What a problem asks of its answer beyond the value: rounding ("to the nearest hundredth", "3 significant
figures", "two decimal places"), read from the prompt into ``Rules`` (pure string work).

>>> rules_from_prompt("What is 7/9? Round your answer to the nearest hundredth.")
Rules(places=2, sig_figs=None, lowest_terms=False)
>>> rules_from_prompt("Give g to three significant figures."), rules_from_prompt("Express it in 2 d.p.").places
(Rules(places=None, sig_figs=3, lowest_terms=False), 2)
>>> rules_from_prompt("How many integers are between 3 and 7?") == EXACT
True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rewards.math.numbers import EXACT, Rules

_COUNT = r"(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten)"
_WORD_COUNT = dict(zip("one two three four five six seven eight nine ten".split(), range(1, 11), strict=True))
_SIG_RE = re.compile(rf"\b{_COUNT}\s+(?:significant\s+(?:figures?|digits?)|sig\.?\s*figs?\b|s\.\s?f\.|sf\b)", re.I)
_PLACES_RE = re.compile(rf"\b{_COUNT}\s+(?:decimal\s+(?:places?|digits?)|d\.\s?p\.|dp\b)", re.I)
_PLACE_NAMES = {
    "tenth": 1,
    "hundredth": 2,
    "thousandth": 3,
    "ten thousandth": 4,
    "hundred thousandth": 5,
    "millionth": 6,
    "whole number": 0,
    "integer": 0,
    "unit": 0,
    "dollar": 0,
    "cent": 2,
    "penny": 2,
    "ten": -1,
    "hundred": -2,
    "thousand": -3,
}
# "to the nearest ..." only (a rounding instruction); "the nearest integer to x" asks for a value, not a rounding.
_NEAREST_RE = re.compile(
    r"\bto\s+the\s+nearest\s+("
    + "|".join(n.replace(" ", r"[-\s]") for n in sorted(_PLACE_NAMES, key=len, reverse=True))
    + r")s?\b",
    re.I,
)


def rules_from_prompt(prompt: str, base: Rules = EXACT) -> Rules:
    """``base`` with the rounding the prompt asks for (the last request in the prompt wins); ``base`` unchanged
    when the prompt asks for none or ``base`` already sets one (a reward keyword overrides the prompt)."""
    if base.places is not None or base.sig_figs is not None:
        return base
    found: list[tuple[int, Rules]] = []
    for m in _SIG_RE.finditer(prompt):
        found.append((m.start(), replace(base, sig_figs=_count(m.group(1)))))
    for m in _PLACES_RE.finditer(prompt):
        found.append((m.start(), replace(base, places=_count(m.group(1)))))
    for m in _NEAREST_RE.finditer(prompt):
        name = " ".join(m.group(1).lower().replace("-", " ").split())
        found.append((m.start(), replace(base, places=_PLACE_NAMES[name])))
    return max(found, key=lambda f: f[0])[1] if found else base


def _count(word: str) -> int:
    return int(word) if word.isdigit() else _WORD_COUNT[word.lower()]


def prompt_text(prompt: str | Sequence[Any]) -> str:
    """A prompt as text: a string, or the contents of a conversation's messages joined (TRL's chat prompts)."""
    if isinstance(prompt, str):
        return prompt
    parts = [m.get("content") for m in prompt if isinstance(m, dict)] if isinstance(prompt, list | tuple) else []
    return "\n".join(p for p in parts if isinstance(p, str))
