"""Synthetic tasks generated locally (nothing can be downloaded): the embedded default for the tiny recipes.

``arith``: sums of 3-5 single digits, solved step by step in the R1 format::

    prompt      "Q: 3+5+7+2\nA:"
    completion  "<think>3+5=8 8+7=15 15+2=17</think><answer>17</answer>"

Demonstrations used to pre-train the tiny base carry a *systematic* mistake: with probability ``mistake_rate`` the
answer repeats the partial sum before the last step ("forgot the last term"). The base thus learns the format and
correct step-by-step sums, but its answers often ignore its own final line; GRPO with an answer reward has to
teach it to trust its reasoning.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from rl.registry import Registry
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


@dataclass(frozen=True)
class Example:
    question: str
    reasoning: str
    answer: str

    def completion(self, answer: str | None = None) -> str:
        return f"<think>{self.reasoning}</think><answer>{self.answer if answer is None else answer}</answer>"


@dataclass(frozen=True)
class Demo:
    """A pre-training demonstration: the example and the (possibly mistaken) answer it shows."""

    example: Example
    shown_answer: str


def arith_example(rng: random.Random, min_terms: int = 3, max_terms: int = 5) -> Example:
    terms = [rng.randint(0, 9) for _ in range(rng.randint(min_terms, max_terms))]
    steps, total = [], terms[0]
    for t in terms[1:]:
        steps.append(f"{total}+{t}={total + t}")
        total += t
    return Example("+".join(map(str, terms)), " ".join(steps), str(total))


def arith_demo(ex: Example, rng: random.Random, mistake_rate: float) -> Demo:
    if rng.random() < mistake_rate:
        # "Forgot the last term": the partial sum before the last step, read off the reasoning itself.
        return Demo(ex, ex.reasoning.split(" ")[-1].split("+")[0])
    return Demo(ex, ex.answer)


TASKS: Registry[Callable[[random.Random], Example]] = Registry("task")
TASKS.add("arith", arith_example)


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
        Prompt(f"{prefix}{i}", tpl.format(question=ex.question), {"answer": ex.answer})
        for i, ex in enumerate(examples)
    ]
