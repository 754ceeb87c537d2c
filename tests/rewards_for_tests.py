"""Rewards referenced by path (``tests/rewards_for_tests.py:name``) in trainer tests.

They are chosen to give non-zero group variance on random tiny models, so that an update really moves weights.
"""

from __future__ import annotations


def digit_share(prompts, completions, **kwargs):
    """Share of characters that are digits: varies across random samples."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def length_reward(prompts, completions, **kwargs):
    return [len(c) / 100.0 for c in completions]


def needs_missing_column(prompts, completions, solution_text, **kwargs):
    return [0.0 for _ in completions]


def flaky(prompts, completions, **kwargs):
    """Raises on batches holding a completion with an even length: failing samples must abstain, not score 0."""
    if any(len(c) % 2 == 0 for c in completions):
        raise RuntimeError("flaky reward failed")
    return [1.0 for _ in completions]


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def returns_nan(prompts, completions, **kwargs):
    return [float("nan") for _ in completions]
