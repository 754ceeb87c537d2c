"""The ``math_accuracy`` reward: 1.0 when the completion's final answer equals the ``answer`` column.

Abstains (None) when the gold cannot be checked against: empty, prose, a number in words, or unparsable. A final
answer that is missing, does not parse, or is too long, too deep or code-like scores 0.0; each verdict's ``reason``
is in its ``Scored`` info (docs/math_checking.md has the policy tables). Rename the gold column with
``RewardSpec.columns`` (``{answer: solution}``). Completions may be strings or, as TRL passes them for
conversational datasets, lists of chat messages (the last message's content is checked).

Options (``RewardSpec.kwargs``): ``decimal_places`` / ``sig_figs`` accept answers rounded that far (otherwise the
prompt's own request, "to the nearest hundredth", "3 significant figures", is read when ``rounding_from_prompt``);
``lowest_terms=True`` rejects fractions with a common factor (``2/4`` for 1/2), which by default count by value.

>>> math_accuracy(["q", "q"], ["<think>..</think><answer>\\\\boxed{12}</answer>", "It is 13."], answer=["12", "12"])
[1.0, 0.0]
>>> math_accuracy(["Round to the nearest tenth."] * 2, ["\\\\boxed{3.1}", "\\\\boxed{3.2}"], answer=["3.14159"] * 2)
[1.0, 0.0]
>>> math_accuracy.score(["q"], ["\\\\boxed{5}"], answer=["five"])[0].info["reason"]
'gold is not math: a number in words'
"""

from __future__ import annotations

from rewards.base import Scored, completion_texts, register_reward
from rewards.math.numbers import Rules
from rewards.math.request import prompt_text, rules_from_prompt
from rewards.math.verify import DEFAULT_TIMEOUT_S, judge_batch, warm_pool


@register_reward("math_accuracy", detailed=True)
def math_accuracy(
    prompts: list,
    completions: list,
    answer: list[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    decimal_places: int | None = None,
    sig_figs: int | None = None,
    lowest_terms: bool = False,
    rounding_from_prompt: bool = True,
    **kwargs,
) -> list[Scored]:
    texts = completion_texts(completions)
    rules = task_rules(prompts, len(texts), decimal_places, sig_figs, lowest_terms, rounding_from_prompt)
    judged = judge_batch(answer, texts, timeout_s, rules)
    out = []
    for j, g in zip(judged, answer, strict=True):
        info = {"extracted": j.extracted, "gold": g, "reason": j.reason}
        out.append(Scored(None if j.verdict is None else float(j.verdict), info))
    return out


def task_rules(
    prompts: list | None,
    n: int,
    decimal_places: int | None = None,
    sig_figs: int | None = None,
    lowest_terms: bool = False,
    rounding_from_prompt: bool = True,
) -> list[Rules]:
    """One ``Rules`` per completion: the keywords, then (when they set no rounding) each prompt's request."""
    base = Rules(decimal_places, sig_figs, lowest_terms)
    if not rounding_from_prompt or not prompts:
        return [base] * n
    if len(prompts) != n:
        raise ValueError(f"math_accuracy: {len(prompts)} prompts but {n} completions")
    return [rules_from_prompt(prompt_text(p), base) for p in prompts]


math_accuracy.prepare = warm_pool  # the sympy workers start when a recipe's rewards are bound, not at the first check
