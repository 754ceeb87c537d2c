"""Algorithms as registered objects: what each declares (normaliser, default clip, options, std scales), that the
declared call signature holds for every registered one, and that the config and the trainer ask the object
instead of testing names. Expected numbers are written as the arithmetic that produces them."""

from __future__ import annotations

import inspect
import math
from typing import get_args, get_type_hints

import pytest
import torch

from core.configio import ConfigError
from core.registry import check_signature
from rl.advantages import ADVANTAGES, STD_SCALES, AdvantageEstimator
from rl.config import AlgorithmConfig, TrainingConfig, load_recipe
from rl.kl import KL_ESTIMATORS
from rl.losses import AGGREGATIONS, LOSS_KEYWORDS, LOSS_POSITIONAL, LOSSES, PolicyLoss
from rl.optim import OPTIMIZERS
from rl.schedules import SCHEDULES, lr_multiplier, make_scheduler
from rollouts.backends import SAMPLERS, TransformersBackend


def _batch():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]])
    return logp, logp - 0.1, torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_accepts_the_declared_arguments(name):
    loss = LOSSES.get(name)
    assert isinstance(loss, PolicyLoss) and loss.name == name
    assert loss.normaliser in ("tokens", "rows")
    params = inspect.signature(loss.fn).parameters
    inspect.signature(loss.fn).bind(*LOSS_POSITIONAL, **dict.fromkeys([*LOSS_KEYWORDS, *loss.options]))
    assert set(params) == {*LOSS_POSITIONAL, *LOSS_KEYWORDS, *loss.options}
    # Called with every common keyword and every declared option, it returns a finite scalar and metrics.
    logp, old, adv, mask = _batch()
    opts = loss.resolve()
    out, metrics = loss(logp, old, adv, mask, kl_BT=torch.zeros_like(logp), beta=0.1, max_len=4, **opts)
    assert out.shape == () and math.isfinite(out.item()) and {"clip_frac", "ratio_mean", "kl"} <= set(metrics)


def test_declared_facts_of_the_builtin_losses():
    declared = {n: (LOSSES.get(n).normaliser, LOSSES.get(n).default_clip) for n in LOSSES.names()}
    assert declared == {
        "grpo": ("rows", (0.2, 0.2)),
        "dapo": ("tokens", (0.2, 0.2)),
        "dr_grpo": ("rows", (0.2, 0.2)),
        "gspo": ("rows", (3e-4, 4e-4)),
        "gspo_token": ("rows", (3e-4, 4e-4)),
        "cispo": ("tokens", (1.0, 4.0)),
    }
    assert all(LOSSES.get(n).options == {"clip_low", "clip_high", "rollout_weight_BT"} for n in LOSSES.names())


def test_an_undeclared_option_is_rejected_by_name():
    logp, old, adv, mask = _batch()
    with pytest.raises(TypeError, match="loss 'grpo' takes no option 'clip_hgh'; its options: clip_high, clip_low"):
        LOSSES.get("grpo")(logp, old, adv, mask, clip_hgh=0.28)


def test_default_clip_comes_from_the_object_and_none_means_default():
    assert LOSSES.get("gspo").resolve() == {"clip_low": 3e-4, "clip_high": 4e-4}
    assert LOSSES.get("gspo").resolve(clip_low=None, clip_high=5e-4) == {"clip_low": 3e-4, "clip_high": 5e-4}
    # Without clip options the default applies: both rows have ratio exp(0.1) = 1.105; row 0 (A = +1) is clipped
    # to 1 + 4e-4, row 1 (A = -1) keeps the unclipped (larger) loss.
    logp, old, adv, mask = _batch()
    default, _ = LOSSES.get("gspo")(logp, old, adv, mask)
    explicit, _ = LOSSES.get("gspo")(logp, old, adv, mask, clip_low=3e-4, clip_high=4e-4)
    assert default.item() == explicit.item() == pytest.approx((-(1 + 4e-4) + math.exp(0.1)) / 2)


def _reinforce(logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len):
    """-A * logp, token mean: a loss with no ratio clip."""
    return -(adv_B.unsqueeze(-1) * logp_BT * mask_BT).sum() / mask_BT.sum(), {}


def test_a_loss_without_clip_declares_no_clip_options():
    loss = PolicyLoss("reinforce", _reinforce, "rows", None)
    assert loss.options == frozenset() and loss.resolve(clip_low=None) == {}
    logp, old, adv, mask = _batch()
    value, _ = loss(logp, old, adv, mask)
    assert value.item() == pytest.approx(-(1.0 * (-1.0 - 2.0) + -1.0 * -0.5) / 3)
    with pytest.raises(TypeError, match="loss 'reinforce' takes no option 'clip_low'; its options: none"):
        loss(logp, old, adv, mask, clip_low=0.2)


def test_clip_set_for_a_loss_without_clip_is_a_config_error_naming_the_key(monkeypatch):
    monkeypatch.setitem(LOSSES._items, "reinforce", PolicyLoss("reinforce", _reinforce, "rows", None))
    load_recipe(None, ["algorithm.loss=reinforce"])  # no clip set: fine
    with pytest.raises(ConfigError, match=r"algorithm\.clip_low: the 'reinforce' loss has no ratio clip; remove"):
        load_recipe(None, ["algorithm.loss=reinforce", "algorithm.clip_low=0.2"])
    with pytest.raises(ConfigError, match=r"algorithm\.clip_high: the 'reinforce' loss has no ratio clip"):
        load_recipe(None, ["algorithm.loss=reinforce", "algorithm.clip_high=0.28"])


def test_a_loss_with_an_off_signature_fails_when_it_registers():
    def no_max_len(logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, clip_low, clip_high): ...

    def hides_options(logp_BT, old_logp_BT, adv_B, mask_BT, **kwargs): ...

    def undeclared(logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len, clip_low, clip_high, tau=1.0): ...

    with pytest.raises(TypeError, match=r"loss 'x': keywords .* \(missing \['max_len'\], undeclared \[\]\)"):
        PolicyLoss("x", no_max_len, "rows", (0.2, 0.2), frozenset({"clip_low", "clip_high"}))
    with pytest.raises(TypeError, match=r"no \*args / \*\*kwargs"):
        PolicyLoss("x", hides_options, "rows", None)
    with pytest.raises(TypeError, match=r"undeclared \['tau'\]"):
        PolicyLoss("x", undeclared, "rows", (0.2, 0.2), frozenset({"clip_low", "clip_high"}))
    with pytest.raises(ValueError, match="normaliser must be 'tokens' or 'rows'"):
        PolicyLoss("x", _reinforce, "sequences", None)
    with pytest.raises(ValueError, match="default_clip exactly when"):
        PolicyLoss("x", _reinforce, "rows", (0.2, 0.2))


def test_check_signature_wants_positional_order():
    def swapped(old_logp_BT, logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len): ...

    with pytest.raises(TypeError, match="takes positional"):
        check_signature("loss 'x'", swapped, LOSS_POSITIONAL, set(LOSS_KEYWORDS))


def test_aggregations_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    agg = {name: AGGREGATIONS.get(name)(x, m, max_len=4).item() for name in AGGREGATIONS.names()}
    assert agg["seq_mean_token_mean"] == pytest.approx(((1.0 + 2.0) / 2 + 4.0 / 1) / 2)
    assert agg["token_mean"] == pytest.approx((1.0 + 2.0 + 4.0) / 3)
    assert agg["seq_mean_token_sum_norm"] == pytest.approx((1.0 + 2.0 + 4.0) / (2 * 4))


# -------------------------------------------------------------- advantages
@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_every_advantage_estimator_takes_its_declared_std_scales(name):
    est = ADVANTAGES.get(name)
    assert isinstance(est, AdvantageEstimator) and est.default_std_scale in est.std_scale_choices
    r, g = torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1])
    for s in est.std_scale_choices:
        assert torch.isfinite(est(r, g, std_scale=s)).all()
    assert set(est.std_scale_choices) <= set(STD_SCALES.names())


def test_std_scales_by_hand():
    r = torch.tensor([1.0, 3.0, float("nan"), 0.0])
    group_std = torch.tensor([0.5, 0.5, 2.0, 2.0], dtype=torch.float64)
    assert STD_SCALES.get("group")(r, group_std) is group_std
    mean = (1.0 + 3.0 + 0.0) / 3
    std = math.sqrt(((1.0 - mean) ** 2 + (3.0 - mean) ** 2 + (0.0 - mean) ** 2) / 2)
    assert STD_SCALES.get("batch")(r, group_std).tolist() == pytest.approx([std] * 4)
    assert STD_SCALES.get("none")(r, group_std) is None
    # One valid reward: no spread, std 0 (the advantage is then 0, not NaN).
    assert STD_SCALES.get("batch")(torch.tensor([1.0, float("nan")]), torch.zeros(2)).tolist() == [0.0, 0.0]


def test_default_std_scale_comes_from_the_estimator():
    r, g = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0])
    assert ADVANTAGES.get("rloo")(r, g).tolist() == pytest.approx([1.0 - 0.0, 0.0 - 0.5, 0.0 - 0.5])
    std = math.sqrt(((1 - 1 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected = [(1 - 1 / 3) / (std + 1e-4), -1 / 3 / (std + 1e-4), -1 / 3 / (std + 1e-4)]
    assert ADVANTAGES.get("grpo")(r, g).tolist() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    "schedule, expected",
    [
        # warmup 2 of 6 updates: (u + 1) / 2 for u < 2, then frac = (u - 2) / (6 - 2), capped at 1
        ("constant", [1 / 2, 2 / 2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [1 / 2, 2 / 2, 1 - 0 / 4, 1 - 1 / 4, 1 - 2 / 4, 1 - 3 / 4, 1 - 4 / 4, 0.0]),
        ("cosine", [1 / 2, 2 / 2, *(0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)), 0.0]),
    ],
)
def test_scheduler_multipliers_by_hand(schedule, expected):
    assert [lr_multiplier(u, schedule=schedule, warmup_steps=2, total_updates=6) for u in range(8)] == pytest.approx(
        expected
    )
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = make_scheduler(opt, schedule=schedule, warmup_steps=2, total_updates=6)
    lrs = []
    for _ in range(8):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * e for e in expected])
    assert sched.state_dict()["lr_lambdas"] == [None]  # a plain function: checkpoints hold no schedule state


def test_scheduler_without_warmup_and_unknown_name():
    assert lr_multiplier(0, schedule="linear", warmup_steps=0, total_updates=4) == 1 - 0 / 4
    assert lr_multiplier(3, schedule="linear", warmup_steps=0, total_updates=4) == 1 - 3 / 4
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(KeyError, match="unknown lr schedule 'step'; known: constant, cosine, linear"):
        make_scheduler(opt, schedule="step", warmup_steps=0, total_updates=4)


# ------------------------------------------------------ samplers, literals
def test_unknown_sampler_raises_listing_the_known_ones():
    assert SAMPLERS.names() == ["generate", "r1kit"]
    with pytest.raises(KeyError, match="unknown sampler 'vllm'; known: generate, r1kit"):
        TransformersBackend(None, None, max_new_tokens=1, sampler="vllm")


@pytest.mark.parametrize(
    "cls, field, registry",
    [(AlgorithmConfig, "kl_estimator", KL_ESTIMATORS), (TrainingConfig, "optimizer", OPTIMIZERS)],
)
def test_config_literals_match_their_registries(cls, field, registry):
    assert sorted(get_args(get_type_hints(cls)[field])) == registry.names()


def test_registry_backed_config_fields_default_to_registered_names():
    a, t = AlgorithmConfig(), TrainingConfig()
    assert a.loss in LOSSES and a.advantage in ADVANTAGES and a.std_scale in STD_SCALES
    assert t.lr_schedule in SCHEDULES
