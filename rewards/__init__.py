"""Rule-based rewards: the interface (``rewards.base``), scoring (``rewards.scoring``) and the built-in rules.

Every built-in is importable by its registry name (``from rewards import math_accuracy``). Importing this package
is cheap: the built-ins (sympy, the code sandbox) load on first use of one of them or of the ``REWARDS`` registry.

>>> import rewards
>>> rewards.REWARDS.get("tag_count") is rewards.tag_count
True
"""

from __future__ import annotations

import importlib
from typing import Any

from rewards.base import REWARDS, DetailedReward, Scored, load_reward, register_reward

BUILTIN_REWARDS = {
    "code_accuracy": "rewards.code.reward",
    "code_all_pass": "rewards.code.reward",
    "code_format_reward": "rewards.format",
    "cosine_length": "rewards.format",
    "language_consistency": "rewards.format",
    "len_reward": "rewards.format",
    "math_accuracy": "rewards.math.reward",
    "overlong_penalty": "rewards.format",
    "r1_format_soft": "rewards.format",
    "r1_format_strict": "rewards.format",
    "reasoning_steps_reward": "rewards.format",
    "repetition_penalty": "rewards.format",
    "tag_count": "rewards.format",
    "think_format_reward": "rewards.format",
}
"""Built-in reward (registry name = attribute name) -> the module that defines and registers it."""

__all__ = ["REWARDS", "DetailedReward", "Scored", "load_reward", "register_reward", *BUILTIN_REWARDS]


_SUBMODULES = ("base", "code", "format", "math", "scoring")


def __getattr__(name: str) -> Any:  # PEP 562: `from rewards import math_accuracy` imports its module only then
    if name in BUILTIN_REWARDS:
        return getattr(importlib.import_module(BUILTIN_REWARDS[name]), name)
    if name in _SUBMODULES:  # `import rewards; rewards.math.verify(...)` worked when the package imported them all
        return importlib.import_module(f"rewards.{name}")
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *BUILTIN_REWARDS, *_SUBMODULES})
