"""Policy losses and KL estimators against numbers computed by hand, plus masking invariants."""

from __future__ import annotations

import math

import pytest
import torch

from rl.kl import KL_ESTIMATORS
from rl.losses import LOSSES, PolicyLoss, aggregate, clipped_surrogate, masked_mean

LOG = math.log


def _inputs():
    # two sequences: 3 real tokens, and 2 real tokens + 1 pad
    old = torch.tensor([[LOG(0.5), LOG(0.5), LOG(0.5)], [LOG(0.4), LOG(0.4), 0.0]])
    new = torch.tensor([[LOG(0.6), LOG(0.5), LOG(0.25)], [LOG(0.6), LOG(0.2), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    return new, old, adv, mask


def _token_losses():
    # ratios: seq0 = [1.2, 1.0, 0.5], seq1 = [1.5, 0.5, -]; clip [0.8, 1.2]
    # A=+1: -min(r, clip(r)) = [-1.2, -1.0, -0.5]
    # A=-2: -min(-2r, -2clip(r)) = 2*max(r, clip(r)) = [2*1.5, 2*0.8]
    return [[-1.2, -1.0, -0.5], [3.0, 1.6]]


def test_grpo_sequence_mean_by_hand():
    new, old, adv, mask = _inputs()
    loss, m = LOSSES.get("grpo")(new, old, adv, mask, clip_low=0.2, clip_high=0.2)
    s0, s1 = _token_losses()
    expected = (sum(s0) / 3 + sum(s1) / 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # clipped tokens: seq1 tok0 (1.5 > 1.2 with A<0 -> max picks unclipped 1.5: not clipped),
    # seq0 tok0 (1.2 at the edge: not clipped), seq1 tok1 (0.5 < 0.8 with A<0: clip to 0.8 -> clipped)
    assert m["clip_frac"].item() == pytest.approx(1 / 5)
    assert m["ratio_mean"].item() == pytest.approx((1.2 + 1.0 + 0.5 + 1.5 + 0.5) / 5, rel=1e-5)


def test_dapo_token_mean_by_hand():
    new, old, adv, mask = _inputs()
    loss, _ = LOSSES.get("dapo")(new, old, adv, mask, clip_low=0.2, clip_high=0.2)
    s0, s1 = _token_losses()
    assert loss.item() == pytest.approx((sum(s0) + sum(s1)) / 5, rel=1e-5)


def test_dr_grpo_constant_normaliser_by_hand():
    new, old, adv, mask = _inputs()
    loss, _ = LOSSES.get("dr_grpo")(new, old, adv, mask, clip_low=0.2, clip_high=0.2, max_len=4)
    s0, s1 = _token_losses()
    assert loss.item() == pytest.approx((sum(s0) + sum(s1)) / (2 * 4), rel=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        LOSSES.get("dr_grpo")(new, old, adv, mask)


def test_clip_higher_is_asymmetric():
    # DAPO clip-higher: ratio 1.25 with A>0 is clipped at 1.2 but not at 1.28
    new, old = torch.tensor([[LOG(1.25)]]), torch.tensor([[0.0]])
    mask, adv = torch.ones(1, 1), torch.tensor([1.0])
    loss_sym, m_sym = LOSSES.get("dapo")(new, old, adv, mask, clip_low=0.2, clip_high=0.2)
    loss_hi, m_hi = LOSSES.get("dapo")(new, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert loss_sym.item() == pytest.approx(-1.2)
    assert loss_hi.item() == pytest.approx(-1.25)
    assert m_sym["clip_frac"].item() == 1.0 and m_hi["clip_frac"].item() == 0.0


def test_kl_is_added_per_token_with_beta():
    new, old, adv, mask = _inputs()
    ref = old.clone()
    kl = KL_ESTIMATORS.get("k1")(new, ref)
    base, _ = LOSSES.get("grpo")(new, old, adv, mask)
    with_kl, m = LOSSES.get("grpo")(new, old, adv, mask, kl_BT=kl, beta=0.1)
    kl0 = (LOG(1.2) + LOG(1.0) + LOG(0.5)) / 3
    kl1 = (LOG(1.5) + LOG(0.5)) / 2
    assert (with_kl - base).item() == pytest.approx(0.1 * (kl0 + kl1) / 2, rel=1e-5)
    assert m["kl"].item() == pytest.approx((LOG(1.2) + 0 + LOG(0.5) + LOG(1.5) + LOG(0.5)) / 5, rel=1e-5)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([LOG(0.5)]), torch.tensor([LOG(0.25)])
    # log(pi/pi_ref) = log 2
    assert KL_ESTIMATORS.get("k1")(logp, ref).item() == pytest.approx(LOG(2))
    assert KL_ESTIMATORS.get("k2")(logp, ref).item() == pytest.approx(0.5 * LOG(2) ** 2)
    # k3 = pi_ref/pi - log(pi_ref/pi) - 1 = 0.5 - log(0.5) - 1
    assert KL_ESTIMATORS.get("k3")(logp, ref).item() == pytest.approx(0.5 - LOG(0.5) - 1)


@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo", "gspo", "gspo_token", "cispo"])
def test_masked_positions_never_change_loss_or_gradient(name):
    new, old, adv, mask = _inputs()
    kw = {"max_len": 4, "kl_BT": None}
    a = new.clone().requires_grad_(True)
    loss_a, _ = LOSSES.get(name)(a, old, adv, mask, **kw)
    loss_a.backward()
    garbage_new = new.clone()
    garbage_new[1, 2] = 1e4
    garbage_old = old.clone()
    garbage_old[1, 2] = float("nan")
    b = garbage_new.requires_grad_(True)
    loss_b, _ = LOSSES.get(name)(b, garbage_old, adv, mask, **kw)
    loss_b.backward()
    assert loss_a.item() == pytest.approx(loss_b.item())
    assert torch.allclose(a.grad, b.grad)
    assert b.grad[1, 2].item() == 0.0


@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo", "gspo", "gspo_token", "cispo"])
def test_empty_mask_gives_zero_not_nan(name):
    new, old, adv, _ = _inputs()
    loss, m = LOSSES.get(name)(new, old, adv, torch.zeros_like(new), max_len=4)
    assert loss.item() == 0.0
    assert all(not math.isnan(v.item()) for v in m.values())


def test_truncated_completion_counts_all_its_tokens():
    # A completion cut at max length has no EOS but every token is real: the mask covers the full row.
    new = torch.tensor([[LOG(0.5)] * 4])
    old = torch.tensor([[LOG(0.25)] * 4])
    loss, _ = LOSSES.get("grpo")(new, old, torch.tensor([1.0]), torch.ones(1, 4), clip_high=10.0)
    assert loss.item() == pytest.approx(-2.0)  # ratio 2, unclipped with clip_high 10


def test_on_policy_gradient_is_the_policy_gradient():
    # With old = new (detached), ratio is 1 and d(loss)/d(logp) = -A / n_tokens for GRPO.
    logp = torch.tensor([[LOG(0.3), LOG(0.7)]], requires_grad=True)
    loss, _ = LOSSES.get("grpo")(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2))
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-1.0, -1.0])


def test_aggregate_and_masked_mean_edges():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert aggregate(x, m, "seq_mean_token_mean").item() == pytest.approx((1.0 + 0.0) / 2)
    assert aggregate(x, m, "token_mean").item() == pytest.approx(1.0)
    assert masked_mean(x, torch.zeros_like(x)).item() == 0.0
    with pytest.raises(KeyError, match="unknown aggregation 'sum'; known: seq_mean_token_mean, "):
        aggregate(x, m, "sum")


def test_clipped_surrogate_reports_clipped_tokens():
    loss, ratio, clipped = clipped_surrogate(
        torch.tensor([[LOG(2.0), LOG(0.5)]]), torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.2
    )
    assert loss[0].tolist() == pytest.approx([-1.2, -0.5])
    assert clipped.tolist() == [[True, False]]


# ------------------------------------------------------------------ rollout-correction weight (rl/correction.py)
BUILTIN = ["grpo", "dapo", "dr_grpo", "gspo", "gspo_token", "cispo"]


def _loss_and_grad(name, new, old, adv, mask, **kw):
    logp = new.clone().requires_grad_(True)
    loss, _ = LOSSES.get(name)(logp, old, adv, mask, max_len=4, **kw)
    loss.backward()
    return loss.detach(), logp.grad


@pytest.mark.parametrize("name", BUILTIN)
def test_no_rollout_weight_is_bit_identical(name):
    new, old, adv, mask = _inputs()
    kl = {"kl_BT": KL_ESTIMATORS.get("k3")(new, old), "beta": 0.1}
    assert LOSSES.get(name).takes_rollout_weight
    base = _loss_and_grad(name, new, old, adv, mask, **kl)
    for weight in (None, torch.ones_like(new)):
        loss, grad = _loss_and_grad(name, new, old, adv, mask, rollout_weight_BT=weight, **kl)
        assert torch.equal(loss, base[0]) and torch.equal(grad, base[1])


def test_a_weight_of_two_doubles_one_token_policy_term():
    new, old, adv, mask = _inputs()
    w = torch.ones_like(new)
    w[1, 0] = 2.0  # seq 1, token 0: policy term 3.0 (see _token_losses)
    s0, s1 = _token_losses()
    dapo, _ = LOSSES.get("dapo")(new, old, adv, mask, rollout_weight_BT=w)
    assert dapo.item() == pytest.approx((sum(s0) + 2 * 3.0 + 1.6) / 5, rel=1e-5)
    grpo, _ = LOSSES.get("grpo")(new, old, adv, mask, rollout_weight_BT=w)
    assert grpo.item() == pytest.approx((sum(s0) / 3 + (2 * 3.0 + 1.6) / 2) / 2, rel=1e-5)


def test_kl_term_is_not_weighted():
    new, old, adv, mask = _inputs()
    kl = KL_ESTIMATORS.get("k1")(new, old.clone())
    w = torch.tensor([[2.0, 0.5, 3.0], [0.0, 4.0, 0.0]])
    base, _ = LOSSES.get("grpo")(new, old, adv, mask, rollout_weight_BT=w)
    with_kl, _ = LOSSES.get("grpo")(new, old, adv, mask, kl_BT=kl, beta=0.1, rollout_weight_BT=w)
    kl0 = (LOG(1.2) + LOG(1.0) + LOG(0.5)) / 3
    kl1 = (LOG(1.5) + LOG(0.5)) / 2
    assert (with_kl - base).item() == pytest.approx(0.1 * (kl0 + kl1) / 2, rel=1e-5)


def test_gspo_row_weight_is_the_mean_of_its_token_weights():
    new, old, adv, mask = _inputs()
    w = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.5, float("nan")]])  # row means 2 and 1; the pad is ignored
    loss, _ = LOSSES.get("gspo")(new, old, adv, mask, rollout_weight_BT=w)
    s0 = (1.2 * 1.0 * 0.5) ** (1 / 3)  # exp(mean log ratio) = 0.84, below the clip range
    term0 = 1.0 * s0  # A = +1: min(s A, clip(s) A) keeps the unclipped s
    term1 = -2.0 * (1 - 3e-4)  # A = -2, s1 = 0.87: the clipped ratio gives the smaller term
    assert loss.item() == pytest.approx(-(2.0 * term0 + 1.0 * term1) / 2, rel=1e-5)


@pytest.mark.parametrize("name", BUILTIN)
def test_gradient_is_scaled_by_the_weight_and_padding_weight_ignored(name):
    new, old, adv, mask = _inputs()
    w = torch.tensor([[2.0, 0.5, 3.0], [0.25, 4.0, float("nan")]])
    _, grad = _loss_and_grad(name, new, old, adv, mask)
    _, grad_w = _loss_and_grad(name, new, old, adv, mask, rollout_weight_BT=w)
    # token losses: d loss / d logp_t scales by w_t; gspo: by the row's mean weight ((2 + 0.5 + 3) / 3, (0.25 + 4) / 2)
    scale = torch.tensor([[(2 + 0.5 + 3) / 3] * 3, [(0.25 + 4) / 2] * 3]) if name == "gspo" else w.nan_to_num(0.0)
    assert torch.allclose(grad_w, grad * scale, rtol=1e-5, atol=1e-7)
    assert grad_w[1, 2].item() == 0.0


def test_dapo_gradient_by_hand_with_weight():
    # On policy (ratio 1, unclipped): d/dlogp of token_mean(-w A r) = -w A / n_tokens
    logp = torch.tensor([[LOG(0.3), LOG(0.7)]], requires_grad=True)
    w = torch.tensor([[2.0, 0.5]])
    loss, _ = LOSSES.get("dapo")(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2), rollout_weight_BT=w)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-2.0 * 2.0 / 2, -0.5 * 2.0 / 2])


def test_a_user_loss_without_the_option_refuses_a_weight():
    def reinforce(logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len):
        return -(adv_B.unsqueeze(-1) * logp_BT * mask_BT).sum() / mask_BT.sum(), {}

    loss = PolicyLoss("reinforce", reinforce, "rows", None)
    assert not loss.takes_rollout_weight
    new, old, adv, mask = _inputs()
    loss(new, old, adv, mask, rollout_weight_BT=None)  # None = no weight: accepted
    with pytest.raises(TypeError, match="takes no option 'rollout_weight_BT'"):
        loss(new, old, adv, mask, rollout_weight_BT=torch.ones_like(new))
