"""Rollout correction inside the trainer: a known, injected mismatch between the sampler's log-probs and the
training forward's reaches the update exactly as computed by hand, and the ``mismatch/*`` metrics are logged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rl.config import load_recipe
from rl.trainer import GRPOTrainer
from rollouts.records import Completion, Prompt, to_tensors

REWARD = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"
LENGTHS = [5, 3, 7, 2]
ADV = [1.0, -1.0, 0.5, -0.5]


def _trainer(model_dir: str, tmp_path: Path, *extra: str) -> GRPOTrainer:
    cfg = load_recipe(
        None,
        [
            f"model.name_or_path={model_dir}",
            "model.finetune=full",
            "data.task=arith",
            "data.num_train=16",
            "data.num_eval=4",
            "rollout.max_new_tokens=8",
            "algorithm.num_generations=4",
            "algorithm.batch_size=4",
            "algorithm.loss=dapo",
            f"rewards.rules=[{{name: '{REWARD}'}}]",
            "training.lr=0.01",
            "training.max_grad_norm=0",  # the gradients compared are the loss's, unclipped
            "logging.progress=false",
            "moe.telemetry=false",
            *extra,
        ],
    )
    return GRPOTrainer(cfg, tmp_path)


def _rows(vocab: int) -> list[Completion]:
    g = torch.Generator().manual_seed(0)
    return [
        Completion(0, Prompt("0", ""), [5, 6, 7], torch.randint(10, vocab, (n,), generator=g).tolist(), "", "eos")
        for n in LENGTHS
    ]


def _grads(trainer: GRPOTrainer, seq, rollout_BT) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    grads: list[dict[str, torch.Tensor]] = []
    named = list(trainer.policy.model.named_parameters())
    trainer.optimizer.optimizer.register_step_pre_hook(
        lambda *_: grads.append({n: p.grad.clone() for n, p in named if p.grad is not None})
    )
    metrics, old_BT = trainer._update(seq, torch.tensor(ADV), rollout_BT)
    return grads[0], trainer._mismatch_metrics(old_BT, rollout_BT, seq.completion_mask_BT)


def _hand_grads(trainer: GRPOTrainer, seq, weight_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """DAPO on-policy (ratio 1): loss = -sum_t w_t A_b logp_t / N over real tokens; its gradient, computed with a
    plain transformers forward."""
    model = trainer.policy.model
    model.zero_grad(set_to_none=True)
    P = seq.prompt_len
    logits = model(input_ids=seq.input_ids_BL, attention_mask=seq.attention_mask_BL, position_ids=seq.position_ids_BL)
    logp_BT = torch.log_softmax(logits.logits[:, P - 1 : -1].float(), -1)
    logp_BT = logp_BT.gather(-1, seq.completion_ids_BT[..., None])[..., 0]
    mask = seq.completion_mask_BT.float()
    loss = -(weight_BT * torch.tensor(ADV)[:, None] * logp_BT * mask).sum() / mask.sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("mode", "weight_at_injected"), [("tis", 2.0), ("mis", 0.0), ("none", 1.0)])
def test_an_injected_mismatch_weighs_the_update_as_computed_by_hand(
    tiny_random_model_dir, tmp_path, mode, weight_at_injected
):
    """The sampler's log-prob of token (0, 0) is set log 3 below the training forward's: ratio 3 > cap 2, so TIS
    weighs that token 2, MIS drops it (0) and none leaves it at 1; every other token has ratio 1 (weight 1)."""
    trainer = _trainer(
        tiny_random_model_dir("qwen3_moe"),
        tmp_path,
        f"algorithm.rollout_correction.mode={mode}",
        "algorithm.rollout_correction.cap=2.0",
    )
    seq = to_tensors(_rows(trainer.policy.model.config.vocab_size), trainer.policy.tokenizer.pad_token_id)
    trainer.policy.model.train()
    old_BT = trainer._logprobs_nograd(trainer.policy.model, seq)
    rollout_BT = old_BT.clone()
    rollout_BT[0, 0] -= math.log(3.0)
    initial = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters()}
    got, metrics = _grads(trainer, seq, rollout_BT)
    with torch.no_grad():
        for n, p in trainer.policy.model.named_parameters():
            p.copy_(initial[n])  # the hand computation starts from the weights the update saw
    weight_BT = torch.ones_like(old_BT)
    weight_BT[0, 0] = weight_at_injected
    want = _hand_grads(trainer, seq, weight_BT)
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=1e-4, msg=n)
    n_tokens = sum(LENGTHS)
    assert metrics["mismatch/max_ratio"].value == pytest.approx(3.0, rel=1e-5)
    assert metrics["mismatch/frac_corrected"] == pytest.approx(0.0 if mode == "none" else 1 / n_tokens)
    k3 = 3.0 - 1 - math.log(3.0)  # r - 1 - log r at the injected token, 0 elsewhere
    assert metrics["mismatch/kl"] == pytest.approx(k3 / n_tokens, rel=1e-4)


def test_mismatch_metrics_are_logged_with_the_transformers_sampler(tiny_random_model_dir, tmp_path):
    """r1kit's sampler returns its log-probs: the step logs the mismatch (mode auto = none there), and it is
    float32 noise, since the sampler runs the training module itself."""
    trainer = _trainer(tiny_random_model_dir("qwen3_moe"), tmp_path)
    assert trainer.correction["mode"] == "none"
    metrics = trainer.train_step()
    for key in ("mismatch/kl", "mismatch/max_ratio", "mismatch/frac_corrected", "mismatch/abs_diff"):
        assert key in metrics
    assert metrics["mismatch/abs_diff"] < 1e-3 and metrics["mismatch/frac_corrected"] == 0.0
