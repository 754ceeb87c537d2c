"""Rollout correction (TIS / MIS) against numbers computed by hand, masking invariants and the loss it feeds."""

from __future__ import annotations

import math

import pytest
import torch

from rl.correction import CORRECTIONS, LOG_RATIO_CLAMP, rollout_correction, rollout_logp_tensor
from rl.losses import LOSSES

LOG = math.log


def _k3(r: float) -> float:
    return r - 1 - LOG(r)


def _one_row():
    # token ratios pi_train / pi_rollout = [0.5 / 0.25, 0.2 / 0.4, 0.9 / 0.3] = [2.0, 0.5, 3.0]
    old = torch.tensor([[LOG(0.5), LOG(0.2), LOG(0.9)]])
    rollout = torch.tensor([[LOG(0.25), LOG(0.4), LOG(0.3)]])
    return old, rollout, torch.ones(1, 3)


def _two_rows():
    # row 0 ratios [2.0, 0.5, 3.0] (product 3.0); row 1 ratios [1.5, 1.2] + 1 pad (product 1.8)
    old = torch.tensor([[LOG(0.5), LOG(0.2), LOG(0.9)], [LOG(0.6), LOG(0.6), 0.0]])
    rollout = torch.tensor([[LOG(0.25), LOG(0.4), LOG(0.3)], [LOG(0.4), LOG(0.5), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return old, rollout, mask


def test_modes_are_registered():
    assert CORRECTIONS.names() == ["mis", "none", "tis"]
    with pytest.raises(KeyError, match="unknown rollout correction 'is'; known: mis, none, tis"):
        rollout_correction(*_one_row(), mode="is", level="token", cap=2.0)


@pytest.mark.parametrize(
    ("mode", "weights", "frac"),
    [("tis", [2.0, 0.5, 2.0], 1 / 3), ("mis", [2.0, 0.5, 0.0], 1 / 3), ("none", [1.0, 1.0, 1.0], 0.0)],
)
def test_token_level_by_hand(mode, weights, frac):
    w, m = rollout_correction(*_one_row(), mode=mode, level="token", cap=2.0)
    assert w[0].tolist() == pytest.approx(weights, rel=1e-6)
    assert m["mismatch/frac_corrected"].item() == pytest.approx(frac)
    assert m["mismatch/max_ratio"].item() == pytest.approx(3.0, rel=1e-6)
    assert m["mismatch/kl"].item() == pytest.approx((_k3(2.0) + _k3(0.5) + _k3(3.0)) / 3, rel=1e-5)
    assert m["mismatch/abs_diff"].item() == pytest.approx((LOG(2.0) + LOG(2.0) + LOG(3.0)) / 3, rel=1e-6)
    assert all(v.shape == () and v.dtype == torch.float32 for v in m.values())


@pytest.mark.parametrize(("mode", "row0", "row1"), [("tis", 2.0, 1.5 * 1.2), ("mis", 0.0, 1.5 * 1.2)])
def test_sequence_level_is_the_product_of_token_ratios(mode, row0, row1):
    w, m = rollout_correction(*_two_rows(), mode=mode, level="sequence", cap=2.0)
    # row 0: 2.0 * 0.5 * 3.0 = 3.0 > cap (TIS: 2.0, MIS: the whole row dropped); row 1: 1.8 kept; pad gets 0
    assert w.tolist()[0] == pytest.approx([row0] * 3, rel=1e-5)
    assert w.tolist()[1] == pytest.approx([row1, row1, 0.0], rel=1e-5)
    assert m["mismatch/max_ratio"].item() == pytest.approx(2.0 * 0.5 * 3.0, rel=1e-5)
    assert m["mismatch/frac_corrected"].item() == pytest.approx(1 / 2)  # units are rows
    # KL and abs diff stay token-level means over the 5 real tokens
    kl = (_k3(2.0) + _k3(0.5) + _k3(3.0) + _k3(1.5) + _k3(1.2)) / 5
    assert m["mismatch/kl"].item() == pytest.approx(kl, rel=1e-5)
    abs_diff = (LOG(2.0) + LOG(2.0) + LOG(3.0) + LOG(1.5) + LOG(1.2)) / 5
    assert m["mismatch/abs_diff"].item() == pytest.approx(abs_diff, rel=1e-5)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["none", "tis", "mis"])
def test_masked_positions_change_nothing(mode, level):
    old, rollout, mask = _two_rows()
    w, m = rollout_correction(old, rollout, mask, mode=mode, level=level, cap=2.0)
    g_old, g_rollout = old.clone(), rollout.clone()
    g_old[1, 2], g_rollout[1, 2] = float("nan"), float("-inf")
    gw, gm = rollout_correction(g_old, g_rollout, mask, mode=mode, level=level, cap=2.0)
    assert torch.equal(w, gw) and w[1, 2].item() == 0.0
    assert all(torch.equal(m[k], gm[k]) for k in m)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["none", "tis", "mis"])
def test_empty_mask_gives_finite_zeros(mode, level):
    old, rollout, _ = _two_rows()
    w, m = rollout_correction(old, rollout, torch.zeros(2, 3), mode=mode, level=level, cap=2.0)
    assert torch.equal(w, torch.zeros(2, 3))
    assert {k: v.item() for k, v in m.items()} == dict.fromkeys(m, 0.0)  # max_ratio 0: the identity of max
    w, m = rollout_correction(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3), mode=mode, level=level, cap=2)
    assert w.shape == (0, 3) and all(v.item() == 0.0 for v in m.values())


def test_nan_rollout_at_a_real_token_means_no_correction():
    old, rollout, mask = _one_row()
    rollout[0, 2] = float("nan")  # the engine could not score the ratio-3 token: its ratio is taken as 1
    w, m = rollout_correction(old, rollout, mask, mode="tis", level="token", cap=2.0)
    assert w[0].tolist() == pytest.approx([2.0, 0.5, 1.0], rel=1e-6)
    assert m["mismatch/kl"].item() == pytest.approx((_k3(2.0) + _k3(0.5) + 0.0) / 3, rel=1e-5)
    assert m["mismatch/abs_diff"].item() == pytest.approx((LOG(2.0) + LOG(2.0) + 0.0) / 3, rel=1e-6)
    w, _ = rollout_correction(old, rollout, mask, mode="tis", level="sequence", cap=2.0)
    assert w[0].tolist() == pytest.approx([2.0 * 0.5 * 1.0] * 3, rel=1e-6)


def test_equal_log_probs_give_weight_one_and_zero_kl():
    old = torch.tensor([[-0.3, -2.0, -7.5]])
    w, m = rollout_correction(old, old.clone(), torch.ones(1, 3), mode="mis", level="sequence", cap=1.0)
    assert torch.equal(w, torch.ones(1, 3))
    assert m["mismatch/kl"].item() == 0.0 and m["mismatch/max_ratio"].item() == 1.0
    assert m["mismatch/frac_corrected"].item() == 0.0 and m["mismatch/abs_diff"].item() == 0.0


def test_weight_and_metrics_have_no_grad():
    old, rollout, mask = _one_row()
    old.requires_grad_(True)
    w, m = rollout_correction(old, rollout, mask, mode="tis", level="token", cap=2.0)
    assert not w.requires_grad and w.grad_fn is None
    assert not any(v.requires_grad for v in m.values())


@pytest.mark.parametrize("cap", [0.0, -1.0, float("nan")])
def test_cap_must_be_positive(cap):
    with pytest.raises(ValueError, match=r"algorithm\.rollout_correction\.cap: must be > 0"):
        rollout_correction(*_one_row(), mode="tis", level="token", cap=cap)


def test_unknown_level_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="unknown 'row'; known: token, sequence"):
        rollout_correction(*_one_row(), mode="tis", level="row", cap=2.0)
    old, rollout, mask = _one_row()
    with pytest.raises(ValueError, match=r"must be the same \[B, T\] shape"):
        rollout_correction(old, rollout[:, :2], mask, mode="tis", level="token", cap=2.0)


def test_long_sequences_stay_finite():
    T = 4096
    old, rollout, mask = torch.full((1, T), -1.0), torch.full((1, T), -1.1), torch.ones(1, T)
    # sum of log ratios = 4096 * 0.1 = 409.6: exp would overflow; the log is clamped to 20 first
    w_tis, m = rollout_correction(old, rollout, mask, mode="tis", level="sequence", cap=2.0)
    w_mis, _ = rollout_correction(old, rollout, mask, mode="mis", level="sequence", cap=2.0)
    assert w_tis.tolist()[0] == pytest.approx([2.0] * T) and torch.equal(w_mis, torch.zeros(1, T))
    assert m["mismatch/max_ratio"].item() == pytest.approx(math.exp(LOG_RATIO_CLAMP), rel=1e-5)
    assert m["mismatch/kl"].item() == pytest.approx(math.exp(0.1) - 1 - 0.1, rel=1e-3)
    assert all(math.isfinite(v.item()) for v in m.values())
    w, _ = rollout_correction(old, torch.full((1, T), -math.inf), mask, mode="tis", level="token", cap=2.0)
    assert w.tolist()[0] == pytest.approx([2.0] * T)  # an engine's -inf log-prob: ratio exp(20), capped


@pytest.mark.parametrize(("mode", "w01"), [("tis", 2.0), ("mis", 0.0)])
def test_known_injected_mismatch_feeds_the_loss(mode, w01):
    old = torch.tensor([[LOG(0.5), LOG(0.4)], [LOG(0.3), 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    rollout = old.clone()
    rollout[0, 1] = old[0, 1] - LOG(3.0)  # the engine gave this token a third of the trainer's probability
    w, m = rollout_correction(old, rollout, mask, mode=mode, level="token", cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, w01], [1.0, 0.0]]), rtol=1e-6)
    assert m["mismatch/max_ratio"].item() == pytest.approx(3.0, rel=1e-6)
    assert m["mismatch/frac_corrected"].item() == pytest.approx(1 / 3)
    # dapo on policy (logp = old: ratio 1, unclipped): token_mean of -w * A * 1
    adv = torch.tensor([1.0, -2.0])
    loss, _ = LOSSES.get("dapo")(old.clone(), old, adv, mask, rollout_weight_BT=w)
    assert loss.item() == pytest.approx((-1.0 * 1.0 - 1.0 * w01 + 2.0 * 1.0) / 3, rel=1e-6)


def test_rollout_logp_tensor_pads_and_refuses_overlong_rows():
    out = rollout_logp_tensor([[-0.5, float("nan")], []], 3)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert math.isnan(out[0, 1].item()) and out[0, [0, 2]].tolist() == [-0.5, 0.0] and out[1].tolist() == [0.0] * 3
    assert rollout_logp_tensor([None], 3) is None
    assert rollout_logp_tensor([], 3).shape == (0, 3)
    with pytest.raises(ValueError, match="row 1: 4 values for at most T=3"):
        rollout_logp_tensor([[-1.0], [-1.0] * 4], 3)
