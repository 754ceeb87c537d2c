"""Rewards that misbehave the ways a newcomer's first reward does (tests/test_newcomer_errors.py)."""

from __future__ import annotations


def returns_none(prompts, completions, **kwargs):
    """Forgot the ``return`` of a list."""
    [1.0 for _ in completions]


def always_raises(prompts, completions, **kwargs):
    raise RuntimeError("this reward always fails")
