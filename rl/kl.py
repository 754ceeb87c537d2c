"""Per-token KL estimators between the policy and the reference, from sampled tokens (Schulman 2020, "Approximating
KL divergence"). ``log_ratio = logp - ref_logp`` = log(pi / pi_ref) on tokens sampled from pi.

Used as a *loss* term (``beta * k``, differentiated through ``logp`` with the samples held fixed), an estimator's
value matters less than its gradient, ``E_pi[k'(log_ratio) * grad log pi]`` (Tang & Munos 2025, "On a few pitfalls
in KL divergence gradient estimation for RL"):

* ``k1 = log r`` has gradient ``E_pi[grad log pi] = 0``: it does not regularise. It is offered as a value (the
  logged ``kl``) only; a recipe asking for it as the loss term is refused.
* ``k2 = (log r)^2 / 2`` gives ``E_pi[log r * grad log pi] = grad KL(pi || pi_ref)``: the exact gradient of the
  reverse KL the objective names.
* ``k3 = pi_ref/pi - log(pi_ref/pi) - 1`` (GRPO eq. 4) gives ``E_pi[(1 - pi_ref/pi) grad log pi] =
  grad KL(pi_ref || pi)``: the gradient of the forward KL, a valid regulariser (it vanishes at pi = pi_ref) but not
  the reverse KL's.

``tests/test_kl_gradients.py`` checks each claim exactly, summing over a small vocabulary instead of sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.registry import Registry


@dataclass(frozen=True)
class KLEstimator:
    """A per-token KL estimator and what its gradient is when it is used as a loss term."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss_gradient: str | None
    """What ``grad E_pi[k]`` (samples fixed) equals; None: nothing useful (refused as a loss term)."""

    def __call__(self, logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
        return self.fn(logp_BT, ref_logp_BT)


KL_ESTIMATORS: Registry[KLEstimator] = Registry("kl estimator")


def kl_estimator(name: str, *, loss_gradient: str | None) -> Callable[[Callable], KLEstimator]:
    """Register the decorated ``(logp_BT, ref_logp_BT) -> kl_BT`` function in ``KL_ESTIMATORS``."""

    def deco(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> KLEstimator:
        return KL_ESTIMATORS.register(name)(KLEstimator(name, fn, loss_gradient))

    return deco


@kl_estimator("k1", loss_gradient=None)
def kl_k1(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Unbiased, high variance, can be negative: ``log(pi/pi_ref)``; zero expected gradient as a loss."""
    return logp_BT - ref_logp_BT


@kl_estimator("k2", loss_gradient="grad KL(pi || pi_ref), the reverse KL")
def kl_k2(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Biased, low variance, non-negative: ``0.5 * log(pi/pi_ref)^2``; as a loss, the reverse KL's gradient."""
    return 0.5 * (logp_BT - ref_logp_BT) ** 2


@kl_estimator("k3", loss_gradient="grad KL(pi_ref || pi), the forward KL")
def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Unbiased, low variance, non-negative (GRPO eq. 4): ``pi_ref/pi - log(pi_ref/pi) - 1``.

    >>> kl_k3(torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([0.])
    """
    d = ref_logp_BT - logp_BT
    return torch.exp(d) - d - 1
