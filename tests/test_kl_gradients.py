"""KL estimators used as loss terms: their expected gradients, computed exactly over a small vocabulary.

For one token position with policy pi = softmax(theta) and a fixed reference, the loss term's expected gradient with
the sampled token held fixed is ``sum_y pi(y) * grad_theta k(log pi(y) - log pi_ref(y))`` (the sample's probability
is a weight, not differentiated: exactly what the trainer's ``beta * k`` does on tokens drawn from pi). Each is
compared with the gradient of the divergence it claims (rl/kl.py), differentiated exactly.
"""

from __future__ import annotations

import pytest
import torch

from core.configio import ConfigError
from rl.config import load_recipe
from rl.kl import KL_ESTIMATORS

V = 5


def _theta_and_ref():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(V, generator=g, dtype=torch.float64).requires_grad_(True)
    ref_logp = torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64), -1)
    return theta, ref_logp


def expected_loss_gradient(name: str) -> torch.Tensor:
    """``sum_y pi(y) grad k(y)``: the estimator's loss gradient in expectation over tokens y ~ pi."""
    theta, ref_logp = _theta_and_ref()
    logp = torch.log_softmax(theta, -1)
    k_V = KL_ESTIMATORS.get(name)(logp, ref_logp)  # one value per possible token
    (grad,) = torch.autograd.grad((logp.exp().detach() * k_V).sum(), theta)
    return grad


def divergence_gradient(direction: str) -> torch.Tensor:
    theta, ref_logp = _theta_and_ref()
    logp = torch.log_softmax(theta, -1)
    p, q = logp.exp(), ref_logp.exp()
    kl = (p * (logp - ref_logp)).sum() if direction == "reverse" else (q * (ref_logp - logp)).sum()
    (grad,) = torch.autograd.grad(kl, theta)
    return grad


def test_k1_has_zero_expected_gradient():
    grad = expected_loss_gradient("k1")
    assert torch.allclose(grad, torch.zeros(V, dtype=grad.dtype), atol=1e-12)
    assert divergence_gradient("reverse").abs().max() > 1e-2  # there was something to regularise


def test_k2_gives_the_reverse_kl_gradient():
    torch.testing.assert_close(expected_loss_gradient("k2"), divergence_gradient("reverse"), rtol=1e-10, atol=1e-12)


def test_k3_gives_the_forward_kl_gradient():
    torch.testing.assert_close(expected_loss_gradient("k3"), divergence_gradient("forward"), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(divergence_gradient("forward"), divergence_gradient("reverse"))  # not the same thing


@pytest.mark.parametrize("name", ["k2", "k3"])
def test_loss_gradient_vanishes_at_the_reference(name):
    _, ref_logp = _theta_and_ref()
    theta = ref_logp.clone().requires_grad_(True)  # pi == pi_ref
    logp = torch.log_softmax(theta, -1)
    k_V = KL_ESTIMATORS.get(name)(logp, ref_logp)
    (grad,) = torch.autograd.grad((logp.exp().detach() * k_V).sum(), theta)
    assert torch.allclose(grad, torch.zeros(V, dtype=grad.dtype), atol=1e-12)


def test_every_offered_estimator_declares_its_loss_gradient():
    assert {n: KL_ESTIMATORS.get(n).loss_gradient is not None for n in KL_ESTIMATORS.names()} == {
        "k1": False,
        "k2": True,
        "k3": True,
    }


def test_k1_as_a_loss_term_is_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"algorithm\.kl_estimator: 'k1' has zero expected gradient"):
        load_recipe(None, ["algorithm.beta=0.04", "algorithm.kl_estimator=k1"])
    assert load_recipe(None, ["algorithm.beta=0", "algorithm.kl_estimator=k1"]).algorithm.kl_estimator == "k1"
