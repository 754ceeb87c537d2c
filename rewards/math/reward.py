"""The ``math_accuracy`` reward: 1.0 when the completion's final answer equals the ``answer`` column.

Abstains (None) only when the gold itself cannot be parsed; an answer that cannot be extracted scores 0.0.
Rename the gold column with ``RewardSpec.columns`` (``{answer: solution}``). Completions may be strings or, as TRL
passes them for conversational datasets, lists of chat messages (the last message's content is checked).

>>> math_accuracy(["q", "q"], ["<think>..</think><answer>\\\\boxed{12}</answer>", "It is 13."], answer=["12", "12"])
[1.0, 0.0]
"""

from __future__ import annotations

from rewards.base import Scored, completion_texts, register_reward
from rewards.math.verify import DEFAULT_TIMEOUT_S, check_batch, extract_answer


@register_reward("math_accuracy", detailed=True)
def math_accuracy(
    prompts: list[str], completions: list[str], answer: list[str], timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs
) -> list[Scored]:
    texts = completion_texts(completions)
    verdicts = check_batch(answer, texts, timeout_s)
    return [
        Scored(None if v is None else float(v), {"extracted": extract_answer(c), "gold": g})
        for v, c, g in zip(verdicts, texts, answer, strict=True)
    ]
