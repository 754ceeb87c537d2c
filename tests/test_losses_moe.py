"""Hand-computed tests for the sequence-level and MoE-oriented losses: gspo, gspo_token, cispo.

Expected values are written as the arithmetic that produces them. Padding holds NaN: it must reach neither the
loss nor the gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

from rl.losses import LOSSES

NAN = float("nan")


def _example():
    """Two sequences: row 0 has two real tokens, row 1 one real token and one NaN-padded position."""
    old_BT = torch.tensor([[-1.0, -2.0], [-0.5, NAN]])
    logp_BT = (old_BT + torch.tensor([[0.1, 0.3], [-0.5, NAN]])).requires_grad_(True)
    mask_BT = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv_B = torch.tensor([1.0, -1.0])
    return logp_BT, old_BT, adv_B, mask_BT


def test_gspo_hand_computed():
    logp, old, adv, mask = _example()
    loss, m = LOSSES.get("gspo")(logp, old, adv, mask, clip_low=0.2, clip_high=0.3)
    # Row 0: s = exp(mean(0.1, 0.3)) = exp(0.2) = 1.221 < 1.3, A = +1, unclipped -> term -exp(0.2).
    # Row 1: s = exp(-0.5) = 0.607, A = -1: min(0.607 * -1, clip(0.607, 0.8, 1.3) * -1) = -0.8 -> term +0.8 (clipped).
    expected = (-math.exp(0.2) + 0.8) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["clip_frac"].item() == pytest.approx(1 / 2)
    assert m["ratio_mean"].item() == pytest.approx((math.exp(0.2) + math.exp(-0.5)) / 2, rel=1e-6)
    loss.backward()
    # d/d logp_t of -(1/2) * A * exp(mean_t diff) = -(1/2) * exp(0.2) * (1/2) per token of row 0; row 1 is clipped.
    g = -math.exp(0.2) / 4
    torch.testing.assert_close(logp.grad, torch.tensor([[g, g], [0.0, 0.0]]))


def test_gspo_token_hand_computed():
    logp, old, adv, mask = _example()
    loss, m = LOSSES.get("gspo_token")(logp, old, adv, mask, clip_low=0.2, clip_high=0.3)
    # Every token carries its sequence's ratio: the same value as gspo.
    assert loss.item() == pytest.approx((-math.exp(0.2) + 0.8) / 2, rel=1e-6)
    # Token-level metrics: 2 unclipped tokens in row 0, 1 clipped token in row 1.
    assert m["clip_frac"].item() == pytest.approx(1 / 3)
    assert m["ratio_mean"].item() == pytest.approx((2 * math.exp(0.2) + math.exp(-0.5)) / 3, rel=1e-6)
    loss.backward()
    # Row 0: -(1/2 rows) * (1/2 tokens) * A * s_i  (d s_it / d logp_t = s_it, with s_it = s_i in value).
    g = -math.exp(0.2) / 4
    torch.testing.assert_close(logp.grad, torch.tensor([[g, g], [0.0, 0.0]]))


def test_cispo_hand_computed():
    old = torch.tensor([[-1.5, -2.0], [-0.1, NAN]])
    logp = torch.tensor([[-1.0, -2.0], [-0.5, NAN]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss, m = LOSSES.get("cispo")(logp, old, adv, mask, clip_low=1.0, clip_high=0.5)
    # Ratios: exp(0.5) = 1.649 -> clipped to 1.5; exp(0) = 1; exp(-0.4) = 0.670 (lower bound 1 - 1.0 = 0: kept).
    # Token terms -w * A * logp: -1.5*2*(-1.0) = 3.0, -1*2*(-2.0) = 4.0, -exp(-0.4)*(-1)*(-0.5); token mean over 3.
    w2 = math.exp(-0.4)
    expected = (3.0 + 4.0 - 0.5 * w2) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["clip_frac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # The weight is a constant (stop-gradient): d/d logp = -w * A / 3, even where the ratio was clipped.
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.5 * 2 / 3, -1.0 * 2 / 3], [w2 / 3, 0.0]]))


@pytest.mark.parametrize("clip", [(3e-4, 4e-4), (0.2, 0.2)])
def test_gspo_equals_gspo_token_for_uniform_sequence_advantages(clip):
    """GSPO paper eq. 14-15: with A_it = A_i, GSPO-token equals GSPO in value and gradient, clipped rows included."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 5
    old = -torch.rand(B, T, generator=g) * 3
    delta = torch.randn(B, T, generator=g) * 1e-3 * torch.tensor([0.1, 0.3, 1, 3, 10, 30]).unsqueeze(-1)
    lengths = torch.tensor([5, 4, 3, 2, 1, 5])
    mask = (torch.arange(T) < lengths.unsqueeze(-1)).float()
    old = torch.where(mask.bool(), old, torch.full_like(old, NAN))
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.5, -0.3])
    grads, losses = [], []
    for name in ("gspo", "gspo_token"):
        logp = (old + delta).detach().requires_grad_(True)
        loss, _ = LOSSES.get(name)(logp, old, adv, mask, clip_low=clip[0], clip_high=clip[1])
        loss.backward()
        losses.append(loss.detach())
        grads.append(logp.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert torch.isfinite(grads[0]).all()
    assert (grads[0][~mask.bool()] == 0).all()
    if clip[0] < 1e-3:  # the tight GSPO range clips some rows and not others: both branches are compared
        assert (grads[0].abs().sum(-1) == 0).any() and (grads[0].abs().sum(-1) > 0).any()


@pytest.mark.parametrize("name", ["gspo", "gspo_token", "cispo"])
def test_empty_mask_gives_zero_not_nan(name):
    logp = torch.full((2, 3), NAN, requires_grad=True)
    loss, m = LOSSES.get(name)(logp, torch.full((2, 3), NAN), torch.tensor([1.0, -1.0]), torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert all(math.isfinite(v.item()) for v in m.values())
    assert (logp.grad == 0).all()


@pytest.mark.parametrize("name", ["gspo", "gspo_token", "cispo"])
def test_on_policy_ratio_is_one(name):
    """At the first update old_logp == logp: every ratio is 1, nothing is clipped (what routing replay protects)."""
    logp = torch.tensor([[-1.0, -2.0, -0.3]], requires_grad=True)
    loss, m = LOSSES.get(name)(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 3))
    assert m["ratio_mean"].item() == 1.0
    assert m["clip_frac"].item() == 0.0
