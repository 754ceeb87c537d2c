"""Rule-based rewards: the interface (``rewards.base``), scoring (``rewards.scoring``) and the built-in rules.

Importing this package registers the built-in rules.
"""

from rewards.base import REWARDS, DetailedReward, Scored, load_reward, register_reward

__all__ = ["REWARDS", "DetailedReward", "Scored", "load_reward", "register_reward"]

import rewards.code  # noqa: E402,F401  -- registers code_accuracy and code_all_pass
import rewards.format  # noqa: E402,F401  (registers the format, language and length rewards)
import rewards.math  # noqa: E402,F401  (registers math_accuracy)
