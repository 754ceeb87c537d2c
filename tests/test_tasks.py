"""Synthetic tasks: the pyfunc generator, its systematic demonstration mistake, per-task prompt columns, and the
per-task demo registry (with arith's demonstrations pinned: they key the cached tiny base)."""

from __future__ import annotations

import itertools
import json
import os
import random

import pytest

from rewards.code import parse_tests
from rl.config import PretrainConfig
from rl.zoo.pretraining import demo_texts
from rollouts.tasks import (
    DEMOS,
    PYFUNC_HIDDEN,
    PYFUNC_RULES,
    PYFUNC_SHOWN,
    TASKS,
    Example,
    arith_example,
    pyfunc_demo,
    pyfunc_example,
    split_examples,
    to_prompts,
)

ALL_RULES = [template.format(k=k) for template, ks in PYFUNC_RULES.items() for k in ks]


def _call(rule_or_code: str, x: int) -> int:
    """Trusted code from this file and the generator: evaluated directly, no sandbox."""
    ns: dict = {}
    exec(rule_or_code if rule_or_code.startswith("def ") else f"def f(x): return {rule_or_code}", ns)
    return ns["f"](x)


def test_every_task_has_a_demonstration_function():
    assert TASKS.names() == DEMOS.names() and "pyfunc" in TASKS


def test_pyfunc_example_states_the_rule_and_tests_hidden_inputs():
    for seed in range(200):
        ex = pyfunc_example(random.Random(seed))
        rule = ex.reasoning.removeprefix("f(x)=")
        assert ex.answer == f"def f(x): return {rule}" and rule in ALL_RULES
        shown = [(int(x), int(y)) for x, y in (p.removeprefix("f(").split(")=") for p in ex.question.split(" "))]
        xs = [x for x, _ in shown]
        assert len(xs) == 3 and xs == sorted(set(xs)) and all(x in PYFUNC_SHOWN for x in xs)
        assert all(y == _call(rule, x) for x, y in shown)
        cases = parse_tests(ex.columns["tests"]).cases  # a JSON string: survives any rollout storage
        assert [c.args[0] for c in cases[:3]] == xs
        hidden = [c.args[0] for c in cases[3:]]
        assert len(hidden) == 3 and all(x in PYFUNC_HIDDEN and x not in xs for x in hidden)
        assert all(c.name == "f" and c.expected == _call(ex.answer, c.args[0]) for c in cases)


def test_pyfunc_worked_example():
    # x+2 shown at 1, 2, 5: f(1)=1+2=3, f(2)=2+2=4, f(5)=5+2=7
    ex = Example("f(1)=3 f(2)=4 f(5)=7", "f(x)=x+2", "def f(x): return x+2")
    assert ex.completion() == "<think>f(x)=x+2</think><answer>def f(x): return x+2</answer>"


def test_three_shown_values_determine_the_rule():
    """No two rules of the family agree on three distinct shown inputs: every question has one right answer."""
    for a, b in itertools.combinations(ALL_RULES, 2):
        agree = [x for x in PYFUNC_SHOWN if _call(a, x) == _call(b, x)]
        assert len(agree) <= 2, (a, b, agree)


@pytest.mark.parametrize(
    ("rule", "mistaken"),
    [("x+2", "x+3"), ("x-1", "x-2"), ("x*9", "x*10"), ("x*x+9", "x*x+10")],
)
def test_pyfunc_demo_mistake_is_off_by_one_in_the_code_only(rule, mistaken):
    ex = Example("q", f"f(x)={rule}", f"def f(x): return {rule}")
    demo = pyfunc_demo(ex, random.Random(0), mistake_rate=1.0)
    assert demo.shown_answer == f"def f(x): return {mistaken}"
    assert demo.example.completion(demo.shown_answer).startswith(f"<think>f(x)={rule}</think>")  # reasoning intact
    assert pyfunc_demo(ex, random.Random(0), mistake_rate=0.0).shown_answer == ex.answer


def test_mistaken_code_fails_the_hidden_tests():
    """Off by one is wrong on every hidden input (all >= 10), so a mistaken program never passes all tests."""
    for seed in range(100):
        ex = pyfunc_example(random.Random(seed))
        wrong = pyfunc_demo(ex, random.Random(0), mistake_rate=1.0).shown_answer
        hidden = parse_tests(ex.columns["tests"]).cases[3:]
        assert all(_call(wrong, c.args[0]) != c.expected for c in hidden), (ex, wrong)


def test_mistake_rate_is_the_share_of_mistaken_demonstrations():
    rng = random.Random(0)
    demos = [pyfunc_demo(pyfunc_example(rng), rng, mistake_rate=0.6) for _ in range(4000)]
    share = sum(d.shown_answer != d.example.answer for d in demos) / len(demos)
    assert abs(share - 0.6) < 0.03  # binomial sd = sqrt(0.6 * 0.4 / 4000) ~ 0.008


def test_prompt_columns_per_task():
    arith = to_prompts([arith_example(random.Random(0))], "qa", "a-")[0]
    assert set(arith.columns) == {"answer"}
    train, ev = split_examples("pyfunc", n_train=20, n_eval=10, seed=3)
    prompts = to_prompts(ev, "qa", "e-")
    assert prompts[0].text == f"Q: {ev[0].question}\nA:" and set(prompts[0].columns) == {"tests"}
    assert json.loads(json.dumps(prompts[0].columns)) == prompts[0].columns
    assert not {e.question for e in ev} & {e.question for e in train}


def test_demo_texts_use_the_task_demonstrations():
    pairs = demo_texts("pyfunc", PretrainConfig(n_demos=50), eval_seed=1234, n_eval=16)
    assert len(pairs) == 50 and all(p.startswith("Q: f(") and c.startswith("<think>f(x)=") for p, c in pairs)


def test_arith_demonstrations_are_unchanged():
    """The cached tiny arith base is keyed by its config, not by these texts: they must not drift."""
    pairs = demo_texts("arith", PretrainConfig(n_demos=3), eval_seed=1234, n_eval=256)
    assert pairs[:2] == [
        ("Q: 7+5+5+2\nA:", "<think>7+5=12 12+5=17 17+2=19</think><answer>19</answer>"),
        ("Q: 3+1+4\nA:", "<think>3+1=4 4+4=8</think><answer>8</answer>"),
    ]


@pytest.mark.sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs each slot as its own uid: needs root")
def test_code_accuracy_scores_pyfunc_completions():
    from rewards import REWARDS

    ex = pyfunc_example(random.Random(7))
    wrong = pyfunc_demo(ex, random.Random(0), mistake_rate=1.0).shown_answer
    completions = [ex.completion(), ex.completion(wrong), "<think>f(x)=x</think><answer>def f(x) return</answer>"]
    scored = REWARDS.get("code_accuracy").score(["p"] * 3, completions, tests=[ex.columns["tests"]] * 3)
    assert scored[0].value == 1.0  # the program comes from <answer> (no fenced block)
    assert scored[1].value <= 1 / 6  # off by one: passes at most f(0) of x*k
    assert scored[2].value == 0.0 and "SyntaxError" in scored[2].info["outcomes"][0]["error"]
    assert [o["status"] for o in scored[0].info["outcomes"]] == ["passed"] * 6
    json.dumps([s.info for s in scored])
