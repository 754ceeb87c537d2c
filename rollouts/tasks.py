"""Synthetic tasks generated locally (nothing can be downloaded): the embedded default for the tiny recipes.

A task is a generator of ``Example`` records (``TASKS``) plus a demonstration function (``DEMOS``) that turns an
example into the (possibly mistaken) completion a tiny base is pre-trained on. ``Example.columns`` are the
dataset columns the task's rewards read.

``arith``: sums of 3-5 single digits, solved step by step in the R1 format::

    prompt      "Q: 3+5+7+2\nA:"
    completion  "<think>3+5=8 8+7=15 15+2=17</think><answer>17</answer>"

Demonstrations used to pre-train the tiny base carry a *systematic* mistake: with probability ``mistake_rate`` the
answer repeats the partial sum before the last step ("forgot the last term"). The base thus learns the format and
correct step-by-step sums, but its answers often ignore its own final line; GRPO with an answer reward has to
teach it to trust its reasoning.

``pyfunc``: infer a one-line Python function from three input/output pairs (see ``pyfunc_example``).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.registry import Registry
from rollouts.records import Prompt

# DeepSeek-R1-Zero's instruction (DeepSeek-R1 paper, Table 1): the plain ``r1`` template, and the system message of
# the ``chat`` template (rollouts.adapters).
R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>."
)
TEMPLATES: Registry[str] = Registry("prompt template")
TEMPLATES.add("r1", R1_SYSTEM_PROMPT + " User: {question}. Assistant:")
# The tiny models read characters: a short template keeps sequences (and CPU steps) short.
TEMPLATES.add("qa", "Q: {question}\nA:")
# The prompt exactly as given: for datasets whose prompt column is already formatted (r1kit sample's rl_prompts).
TEMPLATES.add("none", "{question}")


@dataclass(frozen=True)
class Example:
    question: str
    reasoning: str
    answer: str
    columns: dict[str, Any] | None = field(default=None, hash=False)  # a dict: left out of the hash
    """Dataset columns the rewards read (JSON-able values); None = ``{"answer": answer}``."""

    @property
    def prompt_columns(self) -> dict[str, Any]:
        return {"answer": self.answer} if self.columns is None else dict(self.columns)

    def completion(self, answer: str | None = None) -> str:
        return f"<think>{self.reasoning}</think><answer>{self.answer if answer is None else answer}</answer>"

    def plain_completion(self, answer: str | None = None) -> str:
        """The same worked steps without the R1 tags (a base pre-trained on these has never seen the template)."""
        return f"{self.reasoning} so the answer is {self.answer if answer is None else answer}"


@dataclass(frozen=True)
class Demo:
    """A pre-training demonstration: the example and the (possibly mistaken) answer it shows."""

    example: Example
    shown_answer: str


TASKS: Registry[Callable[[random.Random], Example]] = Registry("task")
DEMOS: Registry[Callable[[Example, random.Random, float], Demo]] = Registry("task demonstration")
"""Per task: ``(example, rng, mistake_rate) -> Demo``, the systematic mistakes a tiny base is pre-trained on."""


@TASKS.register("arith")
def arith_example(rng: random.Random, min_terms: int = 3, max_terms: int = 5) -> Example:
    terms = [rng.randint(0, 9) for _ in range(rng.randint(min_terms, max_terms))]
    steps, total = [], terms[0]
    for t in terms[1:]:
        steps.append(f"{total}+{t}={total + t}")
        total += t
    return Example("+".join(map(str, terms)), " ".join(steps), str(total))


@DEMOS.register("arith")
def arith_demo(ex: Example, rng: random.Random, mistake_rate: float) -> Demo:
    if rng.random() < mistake_rate:
        # "Forgot the last term": the partial sum before the last step, read off the reasoning itself.
        return Demo(ex, ex.reasoning.split(" ")[-1].split("+")[0])
    return Demo(ex, ex.answer)


# --------------------------------------------------------------------------------------------------- pyfunc
# Rule families: the reasoning and the code both spell the rule this way; ``{k}`` is drawn from the range. Three
# points determine the rule within this family (two rules agree on at most two inputs).
PYFUNC_RULES: dict[str, range] = {
    "x+{k}": range(1, 10),
    "x-{k}": range(1, 10),
    "x*{k}": range(2, 10),
    "x*x+{k}": range(1, 10),
}
PYFUNC_SHOWN = range(0, 10)
"""Inputs the prompt may show (three distinct, ascending)."""
PYFUNC_HIDDEN = range(10, 100)
"""Inputs only the tests use: a program must implement the rule, not a lookup of the shown pairs."""


@TASKS.register("pyfunc")
def pyfunc_example(rng: random.Random, n_shown: int = 3, n_hidden: int = 3) -> Example:
    """Write ``f`` from three of its values. The reasoning states the rule, the answer writes it as code::

        question    "f(1)=3 f(2)=4 f(5)=7"
        completion  "<think>f(x)=x+2</think><answer>def f(x): return x+2</answer>"

    The ``tests`` column (a JSON string, the format of ``rewards.code``) checks the shown inputs and
    ``n_hidden`` unseen larger ones.
    """
    template = rng.choice(sorted(PYFUNC_RULES))
    rule = template.format(k=rng.choice(PYFUNC_RULES[template]))
    shown = sorted(rng.sample(PYFUNC_SHOWN, n_shown))
    hidden = sorted(rng.sample(PYFUNC_HIDDEN, n_hidden))
    f = _pyfunc(rule)
    tests = {"function": {"name": "f", "cases": [{"args": [x], "expected": f(x)} for x in shown + hidden]}}
    return Example(
        " ".join(f"f({x})={f(x)}" for x in shown),
        f"f(x)={rule}",
        f"def f(x): return {rule}",
        {"tests": json.dumps(tests)},
    )


@DEMOS.register("pyfunc")
def pyfunc_demo(ex: Example, rng: random.Random, mistake_rate: float) -> Demo:
    if rng.random() < mistake_rate:
        # Off by one: the code's constant (the trailing number) is one more than in the rule just stated.
        return Demo(ex, re.sub(r"\d+$", lambda m: str(int(m.group()) + 1), ex.answer))
    return Demo(ex, ex.answer)


def _pyfunc(rule: str) -> Callable[[int], int]:
    """The rule as a Python function, evaluated here (trusted: the rules come from ``PYFUNC_RULES``)."""
    return eval(f"lambda x: {rule}")  # noqa: S307


def split_examples(task: str, *, n_train: int, n_eval: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Disjoint train/eval examples (by question text): eval questions never appear in training or pre-training."""
    make = TASKS.get(task)
    rng = random.Random(seed)
    eval_set: dict[str, Example] = {}
    while len(eval_set) < n_eval:
        ex = make(rng)
        eval_set.setdefault(ex.question, ex)
    train: list[Example] = []
    while len(train) < n_train:
        ex = make(rng)
        if ex.question not in eval_set:
            train.append(ex)
    return train, list(eval_set.values())


def to_prompts(examples: list[Example], template: str, prefix: str) -> list[Prompt]:
    tpl = TEMPLATES.get(template)
    return [
        Prompt(f"{prefix}{i}", tpl.format(question=ex.question), ex.prompt_columns) for i, ex in enumerate(examples)
    ]
