"""Per-token KL estimators between the policy and the reference, from sampled tokens (Schulman 2020, "Approximating
KL divergence"). ``log_ratio = logp - ref_logp`` = log(pi / pi_ref) on tokens sampled from pi.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.registry import Registry

KL_ESTIMATORS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("kl estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Unbiased, high variance, can be negative: ``log(pi/pi_ref)``."""
    return logp_BT - ref_logp_BT


@KL_ESTIMATORS.register("k2")
def kl_k2(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Biased, low variance, non-negative: ``0.5 * log(pi/pi_ref)^2``."""
    return 0.5 * (logp_BT - ref_logp_BT) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Unbiased, low variance, non-negative (GRPO eq. 4): ``pi_ref/pi - log(pi_ref/pi) - 1``.

    >>> kl_k3(torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([0.])
    """
    d = ref_logp_BT - logp_BT
    return torch.exp(d) - d - 1
