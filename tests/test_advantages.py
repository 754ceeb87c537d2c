"""Advantage estimators against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rl.advantages import ADVANTAGES, grpo_advantages, rloo_advantages

nan = math.nan


def test_grpo_group_std_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0])
    g = torch.tensor([0, 0, 0, 0, 5, 5])
    adv = grpo_advantages(r, g, std_scale="group", eps=0.0)
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3)
    s0 = math.sqrt((4 * 0.25) / 3)
    # group 5: mean 3, unbiased std sqrt((1 + 1) / 1) = sqrt(2)
    s5 = math.sqrt(2.0)
    expected = [0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, -1 / s5, 1 / s5]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


def test_grpo_batch_std_and_none():
    r = torch.tensor([1.0, 3.0, 0.0, 0.0])
    g = torch.tensor([1, 1, 2, 2])
    mean_r = (1 + 3 + 0 + 0) / 4
    batch_std = math.sqrt(((1 - mean_r) ** 2 + (3 - mean_r) ** 2 + 2 * mean_r**2) / 3)
    adv = grpo_advantages(r, g, std_scale="batch", eps=0.0)
    assert adv.tolist() == pytest.approx([-1 / batch_std, 1 / batch_std, 0.0, 0.0], rel=1e-6)
    assert grpo_advantages(r, g, std_scale="none").tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])


def test_groups_are_matched_by_id_not_position():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    g = torch.tensor([3, 8, 3, 8])  # interleaved groups
    assert grpo_advantages(r, g, std_scale="none").tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_all_equal_group_gives_zero_and_no_nan():
    adv = grpo_advantages(torch.tensor([0.7, 0.7, 0.7]), torch.tensor([0, 0, 0]), std_scale="group")
    assert adv.tolist() == [0.0, 0.0, 0.0]
    assert not torch.isnan(adv).any()


def test_group_of_one_gives_zero():
    adv = grpo_advantages(torch.tensor([5.0, 1.0, 2.0]), torch.tensor([0, 1, 1]), std_scale="group", eps=0.0)
    assert adv[0].item() == 0.0
    assert adv[1:].tolist() == pytest.approx([-0.5 / math.sqrt(0.5), 0.5 / math.sqrt(0.5)])


def test_abstained_samples_are_left_out_of_statistics():
    r = torch.tensor([1.0, nan, 0.0, 0.0])
    g = torch.tensor([0, 0, 0, 0])
    adv = grpo_advantages(r, g, std_scale="none")
    mean = (1 + 0 + 0) / 3  # NaN excluded
    assert adv.tolist() == pytest.approx([1 - mean, 0.0, -mean, -mean])
    all_nan = grpo_advantages(torch.tensor([nan, nan]), torch.tensor([0, 0]))
    assert all_nan.tolist() == [0.0, 0.0]


def test_rloo_by_hand():
    # leave-one-out baseline: r_i - mean(others)
    r = torch.tensor([1.0, 0.0, 0.0, 4.0])
    adv = rloo_advantages(r, torch.tensor([0, 0, 0, 0]))
    expected = [1 - (0 + 0 + 4) / 3, 0 - (1 + 0 + 4) / 3, 0 - (1 + 0 + 4) / 3, 4 - (1 + 0 + 0) / 3]
    assert adv.tolist() == pytest.approx(expected)


def test_registry_names_and_errors():
    assert {"grpo", "rloo"} <= set(ADVANTAGES.names())
    with pytest.raises(KeyError, match="known: grpo, rloo"):
        ADVANTAGES.get("ppo")
    with pytest.raises(KeyError, match="unknown std_scale 'row'; known: batch, group, none"):
        grpo_advantages(torch.tensor([1.0]), torch.tensor([0]), std_scale="row")
    with pytest.raises(ValueError, match=r"std_scale: rloo takes only \['none'\], got 'group'"):
        rloo_advantages(torch.tensor([1.0]), torch.tensor([0]), std_scale="group")
    with pytest.raises(ValueError, match="duplicate .*'grpo'"):
        ADVANTAGES.add("grpo", rloo_advantages)  # another definition under a taken name
    ADVANTAGES.add("grpo", grpo_advantages)  # the same definition again (a module imported twice) is no clash
    assert ADVANTAGES.get("grpo") is grpo_advantages
