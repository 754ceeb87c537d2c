from __future__ import annotations

import importlib
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from rewards.base import REWARDS
from rewards.math import check, extract_answer, verify, verify_batch

EQUAL = [
    ("7425000", "7,425,000"),  # thousands separators
    ("1000", "1 000"),
    ("0.5", "\\frac{1}{2}"),  # decimals and fractions
    ("\\frac{1}{3}", "\\dfrac13"),
    ("\\frac{3}{4}", "\\tfrac{3}{4}"),
    ("40/9", "4 4/9"),  # mixed number
    ("28\\%", "28 percent"),  # percentages
    ("7/25", "28%"),
    ("1500", "1.5e3"),  # scientific notation
    ("1000", "1 \\times 10^3"),
    ("2\\sqrt{2}", "\\sqrt{8}"),  # radicals
    ("\\pi/2", "\\frac{\\pi}{2}"),  # pi
    ("e^2", "e \\cdot e"),
    ("(r+5)^2", "(r+5)(r+5)"),  # symbolic
    ("\\tan^2(y)+1", "\\sec^2(y)"),
    ("5", "x = 5"),  # equation vs value
    ("y = 2x+1", "2x+1"),
    ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}"),
    ("[0, 1)", "[0,1)"),  # intervals and unions
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)"),
    ("-2 \\le x \\le 7", "[-2, 7]"),
    ("\\{1, 2, 3\\}", "\\{3, 1, 2\\}"),  # sets are order-free
    ("(1, \\frac{9}{2})", "(1, 4.5)"),  # tuples
    ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),  # matrices
    ("\\begin{pmatrix}1 \\\\ 2\\end{pmatrix}", "\\begin{pmatrix}1.0 \\\\ 2\\end{pmatrix}"),
    ("3+4i", "4i+3"),  # complex
    ("90^\\circ", "90"),  # degrees and units
    ("125 miles", "125"),
    ("\\text{Evelyn}", "Evelyn"),  # text answers
    ("C", "The answer is (C)."),  # multiple choice
    ("120", "5!"),  # factorials and binomials
    ("10", "\\binom{5}{2}"),
    ("1 \\pm \\sqrt{2}", "\\{1+\\sqrt{2}, 1-\\sqrt{2}\\}"),
    # roots are no bigger than their radicands: the size guard must let nested and fractional powers through
    ("\\frac{1}{\\sqrt{\\sqrt{5}+\\sqrt{7}}}", "\\frac{1}{\\sqrt{\\sqrt{7}+\\sqrt{5}}}"),
    ("10^{\\frac{1+\\sqrt{5}}{2}}", "10^{\\frac{\\sqrt{5}+1}{2}}"),
    ("\\sqrt[3]{y}^2", "y^{2/3}"),
    # matrix arithmetic in the prediction is carried out
    (
        "\\begin{pmatrix}3 & 0 \\\\ 0 & 5\\end{pmatrix}",
        "\\begin{pmatrix}1 & 0 \\\\ 0 & 2\\end{pmatrix} + \\begin{pmatrix}2 & 0 \\\\ 0 & 3\\end{pmatrix}",
    ),
    (
        "\\begin{pmatrix}2 & 0 \\\\ 0 & 6\\end{pmatrix}",
        "\\begin{pmatrix}1 & 0 \\\\ 0 & 2\\end{pmatrix} \\begin{pmatrix}2 & 0 \\\\ 0 & 3\\end{pmatrix}",
    ),
    ("15", "15%"),  # a whole-number percentage for a gold written without the sign
    ("(1, 2), (3, 4)", "(3, 4), (1, 2), (1,2)"),  # order-free lists are sets: a repeated part counts once
    ("x = 1, y = 2", "y = 2, x = 1"),  # named values match by name
    ("4, 9 or 12", "12, 9, 4"),  # "or" joins comma lists into one list
    ("a < b < c", "c > b > a"),  # inequality chains
    ("2 \\le |t| \\le 5", "t \\in [-5, -2] \\cup [2, 5]"),  # bounds on |t| are two intervals
    ("0 \\le |t| \\le 3", "[-3, 3]"),
    ("2, 4, 6, \\ldots", "2, 4, 6, ..."),
    ("23456", "$23{,}456$"),  # LaTeX thousands separators
    ("23456", "23 {, } 456"),
    ("12.5", "so it's not 7 but 12.5kg"),  # prose around a number is not an expression
    ("4", "$19 \\bmod 5 = 4$"),  # an equation states its right side even when the left does not parse
    ("\\sqrt{3}", "the answer is sqrt(3)"),
    ("\\sum_{k=1}^{n} k", "\\frac{n(n+1)}{2}"),  # sums are compared at whole n
    ("\\prod_{k=1}^{n} k", "n!"),
]
NOT_EQUAL = [
    ("7425000", "7,425,001"),
    ("1/3", "0.3"),
    ("2.23", "2.232"),
    ("5", "5.001"),
    ("(1, 2)", "(2, 1)"),  # tuples are ordered
    ("[0, 1)", "[0, 1]"),
    ("\\{1, 2\\}", "\\{1, 3\\}"),
    ("x^2+2x+1", "x^3+2x+1"),
    ("7 = 11a + c", "11a + c"),
    ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}"),
    ("C", "The answer is (A)."),
    ("odd", "\\text{oddd}"),
    ("40/9", "4 4/9%"),
    ("11", "11 6/6"),
    ("\\frac{1}{1000!}", "\\frac{1}{1001!}"),  # both underflow as floats
    ("2.5", "2.5%"),  # the sign may only be dropped for whole numbers
    ("1/3", "1/3%"),
    ("x = 1, y = 2", "x = 2, y = 1"),
    ("a < b < c", "b < a < c"),
    ("2 \\le |t| \\le 5", "[2, 5]"),
    ("15", "3 5"),  # numbers side by side are not a product
    ("2, 4, 6", "2, 4, 6, ..."),  # an open-ended list is not the finite one
    ("0", "$\\sum_{j=0}^m\\bigl(j\\bigr)$"),  # digits inside a formula that does not parse are no answer
    ("9", "We get $x = 3$ here."),
    ("\\sum_{k=1}^{n} k", "\\frac{n(n-1)}{2}"),
]


@pytest.mark.parametrize(("gold", "pred"), EQUAL)
def test_equal(gold, pred):
    assert verify(gold, pred), (gold, pred)


@pytest.mark.parametrize(("gold", "pred"), NOT_EQUAL)
def test_not_equal(gold, pred):
    assert not verify(gold, pred), (gold, pred)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>x</think><answer>42</answer>", "42"),
        ("so we get \\boxed{\\frac{1}{2}} and done", "\\frac{1}{2}"),
        ("hence \\fbox{7}.", "7"),
        ("Final Answer: The final answer is $12$. I hope it is correct.", "12"),
        ("We find $x$ and then \\(3\\)", "3"),
        ("Then \\[ 9 \\]", "9"),
        ("so there are 13 birds", "13"),
        # a made-up next chat turn is not part of the answer
        ("So \\boxed{7}. <|im_start|>user\nAnother one? <|im_start|>assistant\n\\boxed{9}", "7"),
        # a final-answer sentence after a box (of a sub-step) overrides it
        ("First \\boxed{3} for the sub-step. Final Answer: The final answer is $41$. I hope it is correct.", "41"),
        # an answer sentence in prose: its first quantity
        ("Final Answer: The smallest $k$ that works is 6.", "6"),
        ("Réponse : il reste 45 billes au total, pas 3.", "45"),
        # a number said after the last formula is the conclusion
        ("We set $a = 2b$ and $b = 4$, so in total there are 9 cookies.", "9"),
        # boxes that give one answer together
        ("\\(a = \\boxed{1}\\) and \\(b = \\boxed{2}\\)", "1, 2"),
        ("\\boxed{1} \\text{ for (i) and } \\boxed{2}", "1, 2"),
        ("\\boxed{1} // \\boxed{2}", "1, 2"),
        ("\\\\boxed{5} ; \\\\boxed{6}", "5, 6"),  # doubled escapes
        # ... and a later box that corrects an earlier one
        ("\\boxed{1}. After checking the computation again, the true value is \\boxed{2}", "2"),
    ],
)
def test_extract(completion, expected):
    assert extract_answer(completion) == expected


def test_gold_with_an_unclosed_box_and_gold_sentences():
    assert verify("The answer is \\boxed{x = 3", "3")
    assert verify("the answer is sqrt(3)", "so we get \\boxed{\\sqrt{3}}")


def test_unparseable_gold_abstains_and_missing_answer_scores_zero():
    assert check("\\frac{", "1") is None
    # ... unless the prediction states it verbatim
    assert check("\\weird{3}", "\\weird{3}") is True
    assert check("\\weird{3}", "\\weird{4}") is None
    reward = REWARDS.get("math_accuracy")
    assert reward(["p", "p"], ["no answer here", "\\boxed{3}"], answer=["3", "\\frac{"]) == [0.0, None]


# Numbers LaTeX can spell: the in-process fast path (exact fractions, rounding rules) against the full path, where
# both sides go through the LaTeX grammar into sympy. Every pair of the list is compared both ways.
NUMERIC = [
    "1/3",
    "0.33",
    "0.333",
    "0.3",
    "2.5",
    "5/2",
    "0.001",
    "3.14159",
    "3.1416",
    "100",
    "100.0",
    "-40/9",
    "28",
    "1000.99",
    "\\frac{7}{4}",
    "1.75",
    "-0",
    "0",
    "1/8",
    "0.125",
    "2/3",
    "0.67",
    "0.667",
    "1 \\times 10^3",
    "1000",
    "0.0001",
    "0.00011",
    "123456789",
    "123456788",
    "-\\frac{1}{2}",
    "-0.5",
    "0.50",
    "2.23",
    "2.232",
    "1.00001",
    "1",
    "1/7",
    "0.142857",
    "0.14",
    "0.143",
]


def test_fast_path_agrees_with_sympy_path_on_numbers():
    from rewards.math.compare import equal, sympy_equal, to_sympy
    from rewards.math.structure import Atom

    disagree = []
    for g in NUMERIC:
        for p in NUMERIC:
            fast = equal(Atom(g), Atom(p), use_sympy=False)  # raises NeedsSympy if it is not the fast path
            full = sympy_equal(to_sympy(g), to_sympy(p))
            if fast != full:
                disagree.append((g, p, fast, full))
    assert disagree == []


def test_check_overrunning_its_limit_kills_and_replaces_the_worker(monkeypatch):
    mv = importlib.import_module("rewards.math.verify")  # the package exports a function of the same name
    pool = mv.pool()
    pool.start()
    before = {w.proc.pid: w.proc for w in pool._idle}
    monkeypatch.setattr(mv, "_DECIDE", "rewards.math.verify:_stall")  # the worker now never answers
    t = time.monotonic()
    assert check("x^2", "x \\cdot x", timeout_s=0.5) is False
    assert time.monotonic() - t < 1.0  # the budget holds, killing included
    monkeypatch.undo()
    killed = [proc for pid, proc in before.items() if proc.poll() is not None]
    assert len(killed) == 1 and killed[0].returncode == -9  # SIGKILL
    pool.start()
    assert len(pool._idle) == pool.size  # a fresh worker took its place
    assert {w.proc.pid for w in pool._idle} != set(before)
    assert check("x^2", "x \\cdot x") is True


MARKER = "/tmp/r1kit_math_pwned"


@pytest.mark.parametrize(
    "pred",
    [
        "\\boxed{__import__('os').system('touch /tmp/r1kit_math_pwned')}",
        "<answer>__import__('os').system('touch /tmp/r1kit_math_pwned')</answer>",
        "__import__('os').system('touch /tmp/r1kit_math_pwned')",
        "$__import__('os').system('touch /tmp/r1kit_math_pwned')$",
    ],
)
def test_model_text_is_never_executed(pred):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    assert not verify("0", pred)
    assert not verify("x", pred)
    assert not os.path.exists(MARKER)


@pytest.mark.parametrize(
    "pred",
    [
        "2^{2^{2^{2^{2^{2}}}}}",
        "10^{10^{10}}",
        "\\begin{pmatrix}1 & 1 \\\\ 1 & 0\\end{pmatrix}^{1000000}",  # matrix arithmetic is size-checked too
        "\\begin{pmatrix}9^{9^{9}} & 1 \\\\ 1 & 0\\end{pmatrix} + \\begin{pmatrix}1 & 1 \\\\ 1 & 0\\end{pmatrix}",
        "\\boxed{9^{9^{9^{9}}}}",
        "+".join(["x"] * 3000),
        "(" * 400 + "1" + ")" * 400,
        "1" * 1_000_000,
        "\\boxed{" + "a" * 1_000_000 + "}",
    ],
)
def test_pathological_inputs_are_false_within_the_limit(pred):
    t = time.monotonic()
    assert not verify("3", pred)
    assert time.monotonic() - t <= 3.0


def test_batch_and_threads():
    golds, preds = ["1/2", "3", "x+1"] * 4, ["0.5", "4", "1+x"] * 4
    expected = [True, False, True] * 4
    assert verify_batch(golds, preds) == expected
    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(verify, golds, preds)) == expected


def _score(args):
    reward = REWARDS.get("math_accuracy")
    return reward(["p"], [args[1]], answer=[args[0]])[0]


def test_reward_in_worker_processes():
    import rewards  # noqa: F401

    with ProcessPoolExecutor(2) as ex:
        assert list(ex.map(_score, [("\\sqrt{4}", "2"), ("x^2", "x \\cdot x"), ("3", "4")])) == [1.0, 1.0, 0.0]
