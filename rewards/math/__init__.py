"""Math answer checking: ``extract_answer``, ``verify``, ``verify_batch`` and the ``math_accuracy`` reward."""

from __future__ import annotations

from rewards.math.reward import math_accuracy
from rewards.math.verify import check, check_batch, extract_answer, verify, verify_batch

__all__ = ["check", "check_batch", "extract_answer", "math_accuracy", "verify", "verify_batch"]
