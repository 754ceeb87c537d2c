"""The public checker: ``judge`` (verdict and reason), ``check`` (which can abstain), ``verify``, their batch forms,
and ``extract_answer``.

Flow: parse the gold (cached; a gold that is empty, prose or a number in words abstains) and the prediction's final
answer in-process (string work; an explicit answer that is too long, too deep, code-like or unparsable is wrong);
decide in-process when only plain numbers, integer arithmetic, text or choice letters are involved; otherwise send
the parsed structures to a worker of the timeout pool, where sympy runs under a hard wall-clock limit. ``Rules``
carry what the task asks beyond the value (rounding, lowest terms). Policies: docs/math_checking.md.

>>> verify("1/2", "The answer is $\\\\frac{1}{2}$.")
True
>>> verify("7425000", "7,425,000"), verify("40/9", "4 4/9"), verify("28\\\\%", "28 percent")
(True, True, True)
>>> extract_answer("<think>...</think><answer>\\\\boxed{\\\\dfrac{3}{4}}</answer>")
'\\\\dfrac{3}{4}'
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from rewards.math.compare import NeedsSympy, equal, valid
from rewards.math.extract import _MATH_RE, after_phrase, answer_region, final_answer, last_boxed, open_boxed
from rewards.math.normalize import normalize
from rewards.math.numbers import EXACT, Rules
from rewards.math.pool import CheckTimeout, TimeoutPool, WorkerLost
from rewards.math.structure import Choice, Node, Text, is_prose, parse_answer, parse_choice

DEFAULT_TIMEOUT_S = 1.0
"""Wall-clock budget of one check, in-process parsing included; the worker's hard limit is what remains of it."""
KILL_MARGIN_S = 0.02
"""Kept back from the budget for killing and replacing an overrunning worker."""
_DECIDE = "rewards.math.verify:decide"
"""What a worker runs for a check (tests point it at ``_stall``)."""
MAX_CANDIDATES = 6
"""Readings of a final answer tried at most (an answer sentence gives itself then its quantity)."""
MAX_GOLD_CHARS = 300
"""A gold without a box or "answer is" statement is read whole only up to this long (else it is a solution)."""
MAX_TEXT_WORDS = 3
"""A text gold of at most this many words is compared (``\\text{Tuesday}``, "not possible"); longer is prose."""
NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
    " eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million billion half"
    " halves third thirds quarter quarters fourth fourths fifth fifths and a minus".split()
)
"""Words of a number written out ("twenty one", "one half"): such a gold abstains instead of failing a correct 5."""

_POOL: TimeoutPool | None = None
_LETTER_PHRASE_RE = re.compile(
    r"(?:answer|réponse)\s*(?:is|est|:)?\s*(?:for sure\s*)?[:：]?\s*\(?([A-E])\)?(?![A-Za-z])"
)
_LETTER_START_RE = re.compile(r"\s*\(?([A-E])\)?(?![A-Za-z])")
_LETTER_ANY_RE = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")


def _warmup() -> None:
    from rewards.math.compare import WARMUP_TEX, to_sympy

    for tex in WARMUP_TEX:
        to_sympy(tex)


def _stall(*args: object) -> None:
    """Test hook: a "check" that never finishes, to drive the overrun-kill path (``tests/test_math_verify.py``)."""
    time.sleep(3600)


def pool() -> TimeoutPool:
    global _POOL
    if _POOL is None:
        _POOL = TimeoutPool(warmup="rewards.math.verify:_warmup")
    return _POOL


def warm_pool() -> None:
    """Start the sympy workers now (the math rewards' ``prepare``, run when a recipe's rewards are bound), so the
    first symbolic check of a run does not wait seconds for them to import sympy."""
    pool().start()


def extract_answer(text: str) -> str | None:
    """The answer string a completion gives (the first reading of its final answer that parses), or None."""
    final = final_answer(text)
    if final.problem is not None:
        return None
    for c in final.candidates[:MAX_CANDIDATES]:
        if parse_answer(c) is not None:
            return c
    return None


@dataclass(frozen=True)
class Gold:
    """A parsed gold answer, or why it cannot be checked against."""

    node: Node | None
    abstain: str | None = None
    """Why checks against this gold abstain ("gold is empty", "gold is not math: prose", ...); None when it is math."""
    verbatim: str | None = None
    """For a prose gold: the only text a prediction may match (verbatim, case and spacing aside)."""


@lru_cache(maxsize=65536)
def gold_of(gold: str) -> Gold:
    """The gold's structure; gold may be a bare answer, LaTeX, or a whole solution with ``\\boxed{}``.

    Read from its last box, its "the answer is" statement, or the whole gold; never from a number found inside
    prose (a prose gold abstains). The boundary (docs/math_checking.md): choice letters, numbers, math, and text of at
    most ``MAX_TEXT_WORDS`` words (``\\text{Tuesday}``, "yes") are compared; longer prose and numbers in words abstain.
    """
    gold = gold.strip()
    if not gold or not re.sub(r"[\s$.]|\\boxed\{\s*\}", "", gold):
        return Gold(None, "gold is empty")
    choice = parse_choice(gold) or _phrase_choice(gold)
    if choice is not None:
        return Gold(choice)
    boxed = last_boxed(gold)
    if boxed is None:
        boxed = open_boxed(gold)  # "\\boxed{W(n) = 1 \\text{ and } W(n) = -1" lost its closing brace
    candidates = [boxed] if boxed is not None else []
    candidates += after_phrase(gold)
    if len(gold) <= MAX_GOLD_CHARS:
        candidates.append(re.sub(r"(?<!\\)\$", " ", gold))
    for c in candidates:
        node = parse_answer(c)
        if node is not None:
            return _text_gold(node, c) if isinstance(node, Text) else Gold(node)
    key = text_key(gold)
    if _number_words(key):
        return Gold(None, "gold is not math: a number in words", key)  # "twenty-one"
    if is_prose(normalize(gold)):
        return Gold(None, "gold is not math: prose", key if len(gold) <= MAX_GOLD_CHARS else None)
    return Gold(None, "gold does not parse")


def _text_gold(node: Text, source: str) -> Gold:
    key = text_key(source)
    if _number_words(key):
        return Gold(node, "gold is not math: a number in words", key)  # "five" vs a correct 5 must not score 0
    if len(re.findall(r"[A-Za-z]+", key)) > MAX_TEXT_WORDS:
        return Gold(node, "gold is not math: prose", key)
    return Gold(node)


def _number_words(key: str) -> bool:
    words = re.findall(r"[A-Za-z]+", key)
    return bool(words) and all(w.lower() in NUMBER_WORDS for w in words)


def text_key(s: str) -> str:
    """A text answer compared verbatim: ``\\text{}`` unwrapped, case, spacing and end punctuation ignored."""
    s = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", normalize(s))
    return " ".join(s.replace("$", " ").split()).strip(" .").lower()


def parse_gold(gold: str) -> Node | None:
    """The gold's structure, or None when checks against it abstain (``gold_of`` says why)."""
    g = gold_of(gold)
    return None if g.abstain else g.node


def _phrase_choice(gold: str) -> Choice | None:
    m = re.search(r"answer is\s*([\s\S]*)$", gold)
    return parse_choice(m.group(1).strip()) if m else None


def choice_of(text: str) -> str | None:
    """The multiple-choice letter a completion picks: boxed, "answer is X", a leading letter, else the last one."""
    region = answer_region(text)
    boxed = last_boxed(region)
    if boxed is not None:
        c = parse_choice(normalize(boxed))
        return c.letter if c else None
    short = normalize(region)
    if len(short) <= 20 and parse_choice(short):
        return parse_choice(short).letter
    if " " not in short:
        return None  # "\mathrm{E}*2" is an expression, not the letter E
    for m in reversed(list(_MATH_RE.finditer(region))):
        c = parse_choice(normalize(next(g for g in m.groups() if g is not None)))
        if c:
            return c.letter
    for pattern in (_LETTER_PHRASE_RE, _LETTER_START_RE):
        found = pattern.findall(region) if pattern is _LETTER_PHRASE_RE else pattern.match(region)
        if found:
            return found[-1] if isinstance(found, list) else found.group(1)
    found = _LETTER_ANY_RE.findall(region)
    return found[-1] if found else None


def decide(gold: Node, preds: tuple[Node, ...], use_sympy: bool, rules: Rules = EXACT) -> tuple[bool | None, str]:
    """(verdict, reason): None when the gold itself does not parse; else whether the first candidate that parses
    equals it. A first candidate that is the gold verbatim is equal even when sympy cannot read either."""
    if preds and preds[0] == gold:
        return True, "correct"
    if not valid(gold, use_sympy):
        return None, "gold does not parse"
    for node in preds:
        if valid(node, use_sympy):
            ok = equal(gold, node, use_sympy, rules)
            return ok, "correct" if ok else "wrong"
    return False, "final answer does not parse"


@dataclass(frozen=True)
class Judgement:
    """A check's verdict (None abstains), why, and the answer string it read."""

    verdict: bool | None
    reason: str
    extracted: str | None = None


def judge(gold: str, prediction: str, timeout_s: float = DEFAULT_TIMEOUT_S, rules: Rules = EXACT) -> Judgement:
    """The detailed check ``check`` and ``verify`` build on.

    >>> judge("12", "so \\\\boxed{12}")
    Judgement(verdict=True, reason='correct', extracted='12')
    >>> judge("twelve", "so \\\\boxed{12}").reason, judge("3", "\\\\boxed{print(3)}").reason
    ('gold is not math: a number in words', 'final answer does not parse: code-like')
    """
    start = time.monotonic()
    g = gold_of(gold)
    if g.abstain is not None:  # not math: only the gold's own words, verbatim, can be recognised as correct
        final = final_answer(prediction) if g.verbatim else None
        if final and final.candidates and text_key(final.candidates[0]) == g.verbatim:
            return Judgement(True, "correct (the gold's text verbatim)", final.candidates[0])
        return Judgement(None, g.abstain)
    if isinstance(g.node, Choice):
        letter = choice_of(prediction)
        if letter is None:
            return Judgement(False, "no choice letter found")
        ok = letter == g.node.letter
        return Judgement(ok, "correct" if ok else "wrong", letter)
    final = final_answer(prediction)
    if final.problem is not None:
        return Judgement(False, f"final answer does not parse: {final.problem}")
    readings = [(c, parse_answer(c)) for c in final.candidates[:MAX_CANDIDATES]]
    readings = [(c, n) for c, n in readings if n is not None]
    if not readings:
        return Judgement(False, "final answer does not parse" if final.explicit else "no final answer found")
    extracted, preds = readings[0][0], tuple(n for _, n in readings)
    try:
        verdict, reason = decide(g.node, preds, False, rules)
        return Judgement(verdict, reason, extracted)
    except NeedsSympy:
        pass
    limit = timeout_s - (time.monotonic() - start) - KILL_MARGIN_S
    if limit <= 0:
        return Judgement(False, "timed out", extracted)
    try:
        verdict, reason = pool().run(_DECIDE, (g.node, preds, True, rules), limit)
    except CheckTimeout:
        return Judgement(False, "timed out", extracted)
    except WorkerLost:
        return Judgement(False, "checker worker lost", extracted)
    return Judgement(verdict, reason, extracted)


def check(gold: str, prediction: str, timeout_s: float = DEFAULT_TIMEOUT_S, rules: Rules = EXACT) -> bool | None:
    """Like ``verify`` but None when the gold cannot be checked against (the reward then abstains)."""
    return judge(gold, prediction, timeout_s, rules).verdict


def verify(gold: str, prediction: str, timeout_s: float = DEFAULT_TIMEOUT_S, rules: Rules = EXACT) -> bool:
    """Whether ``prediction`` (a bare answer or a whole completion) states the answer ``gold``."""
    return bool(check(gold, prediction, timeout_s, rules))


def judge_batch(
    golds: Sequence[str],
    preds: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    rules: Rules | Sequence[Rules] = EXACT,
) -> list[Judgement]:
    """``judge`` for many pairs (``rules``: one for all, or one per pair), using every worker of the pool at once."""
    if len(golds) != len(preds):
        raise ValueError(f"judge_batch: {len(golds)} golds but {len(preds)} predictions")
    per_pair = [rules] * len(golds) if isinstance(rules, Rules) else list(rules)
    if len(per_pair) != len(golds):
        raise ValueError(f"judge_batch: {len(golds)} golds but {len(per_pair)} rules")
    args = list(zip(golds, preds, per_pair, strict=True))
    if len(args) <= 1:
        return [judge(g, p, timeout_s, r) for g, p, r in args]
    with ThreadPoolExecutor(max_workers=pool().size) as ex:
        return list(ex.map(lambda a: judge(a[0], a[1], timeout_s, a[2]), args))


def check_batch(
    golds: Sequence[str],
    preds: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    rules: Rules | Sequence[Rules] = EXACT,
) -> list[bool | None]:
    """``check`` for many pairs, using every worker of the pool at once."""
    return [j.verdict for j in judge_batch(golds, preds, timeout_s, rules)]


def verify_batch(
    golds: Sequence[str],
    preds: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    rules: Rules | Sequence[Rules] = EXACT,
) -> list[bool]:
    return [bool(v) for v in check_batch(golds, preds, timeout_s, rules)]
