"""The public checker: ``extract_answer``, ``verify``, ``verify_batch`` and ``check`` (which can abstain).

Flow: parse the gold (cached) and the prediction's candidate answers in-process (string work); decide in-process
when only plain numbers, text or choice letters are involved; otherwise send the parsed structures to a worker of
the timeout pool, where sympy runs under a hard wall-clock limit.

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
from functools import lru_cache

from rewards.math.compare import NeedsSympy, equal, valid
from rewards.math.extract import _MATH_RE, after_phrase, answer_candidates, answer_region, last_boxed, open_boxed
from rewards.math.normalize import normalize
from rewards.math.pool import CheckTimeout, TimeoutPool, WorkerLost
from rewards.math.structure import Choice, Node, parse_answer, parse_choice

DEFAULT_TIMEOUT_S = 1.0
"""Wall-clock budget of one check, in-process parsing included; the worker's hard limit is what remains of it."""
KILL_MARGIN_S = 0.02
"""Kept back from the budget for killing and replacing an overrunning worker."""
_DECIDE = "rewards.math.verify:decide"
"""What a worker runs for a check (tests point it at ``_stall``)."""
MAX_CANDIDATES = 6

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


def extract_answer(text: str) -> str | None:
    """The answer string a completion gives (the first candidate that parses), or None."""
    for c in answer_candidates(text)[:MAX_CANDIDATES]:
        if parse_answer(c) is not None:
            return c
    return None


@lru_cache(maxsize=65536)
def parse_gold(gold: str) -> Node | None:
    """The gold's structure; gold may be a bare answer, LaTeX, or a whole solution with ``\\boxed{}``."""
    gold = gold.strip()
    choice = parse_choice(gold) or _phrase_choice(gold)
    if choice is not None:
        return choice
    boxed = last_boxed(gold)
    if boxed is None:
        boxed = open_boxed(gold)  # "\\boxed{W(n) = 1 \\text{ and } W(n) = -1" lost its closing brace
    candidates = [boxed] if boxed is not None else []
    candidates += after_phrase(gold)
    if len(gold) <= 300:
        candidates.append(re.sub(r"(?<!\\)\$", " ", gold))
    candidates += answer_candidates(gold)
    for c in candidates:
        node = parse_answer(c)
        if node is not None:
            return node
    return None


def _phrase_choice(gold: str) -> Choice | None:
    m = re.search(r"answer is\s*([\s\S]*)$", gold)
    return parse_choice(m.group(1).strip()) if m else None


def pred_nodes(prediction: str, gold: Node) -> tuple[Node, ...]:
    if isinstance(gold, Choice):
        letter = choice_of(prediction)
        return (Choice(letter),) if letter else ()
    nodes = (parse_answer(c) for c in answer_candidates(prediction)[:MAX_CANDIDATES])
    return tuple(n for n in nodes if n is not None)


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


def decide(gold: Node, preds: tuple[Node, ...], use_sympy: bool) -> bool | None:
    """None when the gold itself does not parse; else whether the first parseable candidate equals it.

    A first candidate that is the gold verbatim is equal even when sympy cannot read either.
    """
    if preds and preds[0] == gold:
        return True
    if not valid(gold, use_sympy):
        return None
    for node in preds:
        if valid(node, use_sympy):
            return equal(gold, node, use_sympy)
    return False


def check(gold: str, prediction: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool | None:
    """Like ``verify`` but None when the gold cannot be parsed (the reward then abstains)."""
    start = time.monotonic()
    gold_node = parse_gold(gold)
    if gold_node is None:
        return None
    preds = pred_nodes(prediction, gold_node)
    try:
        return decide(gold_node, preds, use_sympy=False)
    except NeedsSympy:
        pass
    limit = timeout_s - (time.monotonic() - start) - KILL_MARGIN_S
    if limit <= 0:
        return False
    try:
        return pool().run(_DECIDE, (gold_node, preds, True), limit)
    except (CheckTimeout, WorkerLost):
        return False


def verify(gold: str, prediction: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether ``prediction`` (a bare answer or a whole completion) states the answer ``gold``."""
    return bool(check(gold, prediction, timeout_s))


def check_batch(golds: Sequence[str], preds: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[bool | None]:
    """``check`` for many pairs, using every worker of the pool at once."""
    if len(golds) != len(preds):
        raise ValueError(f"check_batch: {len(golds)} golds but {len(preds)} predictions")
    if len(golds) <= 1:
        return [check(g, p, timeout_s) for g, p in zip(golds, preds, strict=True)]
    with ThreadPoolExecutor(max_workers=pool().size) as ex:
        return list(ex.map(lambda gp: check(gp[0], gp[1], timeout_s), zip(golds, preds, strict=True)))


def verify_batch(golds: Sequence[str], preds: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[bool]:
    return [bool(v) for v in check_batch(golds, preds, timeout_s)]
