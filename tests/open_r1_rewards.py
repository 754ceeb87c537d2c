"""Reward functions with the signatures and conventions open-r1 publishes, used unchanged in r1kit recipes.

Source: huggingface/open-r1, ``src/open_r1/rewards.py`` (``accuracy_reward`` and ``format_reward``): keyword
batch functions that read a dataset column by name (``solution``) and index each conversational completion as
``completion[0]["content"]``. Same signatures, same math_verify calls and the same format regex as published;
only the print statements are left out.

Below them, ``spy``: not from open-r1, a TRL-style reward that records what the trainer passes it.
"""

from __future__ import annotations

import re

from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

# ---- open-r1 -----------------------------------------------------------------------------------------------


def accuracy_reward(completions, solution, **kwargs):
    """Reward function that checks if the completion is the same as the ground truth."""
    contents = [completion[0]["content"] for completion in completions]
    rewards = []
    for content, sol in zip(contents, solution):  # noqa: B905  (as published)
        gold_parsed = parse(sol, extraction_mode="first_match", extraction_config=[LatexExtractionConfig()])
        if len(gold_parsed) != 0:
            # We require the answer to be provided in correct latex (no malformed operators)
            answer_parsed = parse(
                content,
                extraction_config=[
                    LatexExtractionConfig(
                        normalization_config=NormalizationConfig(
                            nits=False,
                            malformed_operators=False,
                            basic_latex=True,
                            equations=True,
                            boxed="all",
                            units=True,
                        ),
                        # Ensures that boxed is tried first
                        boxed_match_priority=0,
                        try_extract_without_anchor=False,
                    )
                ],
                extraction_mode="first_match",
            )
            # Reward 1 if the content is the same as the ground truth, 0 otherwise
            try:
                reward = float(verify(answer_parsed, gold_parsed))
            except Exception:
                reward = 0.0
        else:
            # If the gold solution is not parseable, we reward 1 to skip this example
            reward = 1.0
        rewards.append(reward)
    return rewards


def format_reward(completions, **kwargs):
    """Reward function that checks if the reasoning process is enclosed within <think> and </think> tags, while the
    final answer is enclosed within <answer> and </answer> tags."""
    pattern = r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content, re.DOTALL | re.MULTILINE) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


# ---- not open-r1: what reaches a reward ---------------------------------------------------------------------

CALLS: list[dict] = []
"""One entry per call of ``spy``: what the trainer passed it."""


def spy(prompts, completions, completion_ids, trainer_state, log_metric, log_extra, **kwargs):
    """Records its arguments, logs the batch size as a metric and each completion's token count as an extra
    column, and scores the token count."""
    CALLS.append(
        {
            "prompts": prompts,
            "completions": completions,
            "completion_ids": completion_ids,
            "global_step": trainer_state.global_step,
            "max_steps": trainer_state.max_steps,
            "columns": sorted(kwargs),
        }
    )
    log_metric("spy/batch_size", len(completions))
    log_extra("n_ids", [len(ids) for ids in completion_ids])
    return [float(len(ids)) for ids in completion_ids]
