"""The ``math_accuracy`` reward: 1.0 when the completion's final answer equals the ``answer`` column.

Abstains (None) only when the gold itself cannot be parsed; an answer that cannot be extracted scores 0.0.
Rename the gold column with ``RewardSpec.columns`` (``{answer: solution}``).

>>> math_accuracy(["q", "q"], ["<think>..</think><answer>\\\\boxed{12}</answer>", "It is 13."], answer=["12", "12"])
[1.0, 0.0]
"""

from __future__ import annotations

from rewards.base import Scored, register_reward
from rewards.math.verify import DEFAULT_TIMEOUT_S, check_batch, extract_answer


@register_reward("math_accuracy", detailed=True)
def math_accuracy(
    prompts: list[str], completions: list[str], answer: list[str], timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs
) -> list[Scored]:
    verdicts = check_batch(answer, completions, timeout_s)
    return [
        Scored(None if v is None else float(v), {"extracted": extract_answer(c), "gold": g})
        for v, c, g in zip(verdicts, completions, answer, strict=True)
    ]
