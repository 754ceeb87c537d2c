"""End-to-end trainer steps on tiny random MoE models: parameters change, losses stay finite, runs resume exactly."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from rl.config import load_recipe
from rl.trainer import GRPOTrainer

REWARD = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"


def _cfg(model_dir: str, *extra: str):
    return load_recipe(
        None,
        [
            f"model.name_or_path={model_dir}",
            "data.task=arith",
            "data.num_train=64",
            "data.num_eval=8",
            "rollout.max_new_tokens=12",
            "algorithm.num_generations=4",
            "algorithm.batch_size=8",
            f"rewards.rules=[{{name: '{REWARD}'}}]",
            "training.max_steps=2",
            "training.lr=0.01",
            "training.torch_threads=2",
            "logging.progress=false",
            "logging.save_every=1",
            *extra,
        ],
    )


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen3_moe"])
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_one_step_changes_parameters_and_keeps_loss_finite(tiny_random_model_dir, tmp_path, family, finetune):
    cfg = _cfg(tiny_random_model_dir(family), f"model.finetune={finetune}", "training.max_steps=1")
    trainer = GRPOTrainer(cfg, tmp_path)
    before = _snapshot(trainer.policy.model)
    metrics = trainer.train_step()
    after = _snapshot(trainer.policy.model)
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
    assert 0 < metrics["entropy"] < math.log(trainer.policy.model.config.vocab_size)  # nats per token, as in TRL
    assert metrics["frac_groups_zero_std"] < 1.0, "the test reward must give a learning signal"
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed, "no trainable parameter moved"
    if finetune == "lora":
        assert all("lora_" in n for n in before), "LoRA must train adapters only"


def test_full_finetune_with_kl_loads_a_frozen_reference(tiny_random_model_dir, tmp_path):
    cfg = _cfg(
        tiny_random_model_dir("qwen3_moe"), "model.finetune=full", "algorithm.beta=0.05", "algorithm.num_iterations=2"
    )
    trainer = GRPOTrainer(cfg, tmp_path)
    assert trainer.policy.reference is not None
    ref_before = _snapshot(trainer.policy.reference.requires_grad_(True))
    trainer.policy.reference.requires_grad_(False)
    metrics = trainer.train_step()
    assert math.isfinite(metrics["kl"]) and metrics["kl"] >= 0
    assert all(torch.equal(p, ref_before[n]) for n, p in trainer.policy.reference.named_parameters())


def test_lora_reference_is_the_base_with_adapters_off(tiny_random_model_dir, tmp_path):
    cfg = _cfg(tiny_random_model_dir("deepseek_v3"), "algorithm.beta=0.1", "algorithm.num_iterations=2")
    trainer = GRPOTrainer(cfg, tmp_path)
    assert trainer.policy.reference is None and trainer.policy.is_lora
    trainer.train_step()
    metrics = trainer.train_step()
    assert metrics["kl"] > 0, "after updates the adapted policy must differ from the base"


def test_train_writes_the_run_directory(tiny_random_model_dir, tmp_path):
    cfg = _cfg(tiny_random_model_dir("deepseek_v3"))
    summary = GRPOTrainer(cfg, tmp_path).train()
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "final/adapter_model.safetensors"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    assert {"base_accuracy", "final_accuracy", "steps", "wall_seconds", "world_size"} <= set(saved)
    assert saved["steps"] == 2 and saved["world_size"] == 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    # the resolved config round-trips
    assert load_recipe(tmp_path / "config.yaml") == cfg


def test_final_lora_adapter_loads_with_peft(tiny_random_model_dir, tmp_path):
    from peft import AutoPeftModelForCausalLM

    model_dir = tiny_random_model_dir("deepseek_v3")
    GRPOTrainer(_cfg(model_dir, "training.max_steps=1"), tmp_path).train()
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "final")
    assert any("lora_" in n for n, _ in model.named_parameters())


def test_resume_continues_as_the_uninterrupted_run(tiny_random_model_dir, tmp_path):
    model_dir = tiny_random_model_dir("deepseek_v3")
    straight = tmp_path / "straight"
    GRPOTrainer(_cfg(model_dir, "training.max_steps=4", "algorithm.num_iterations=2"), straight).train()

    resumed = tmp_path / "resumed"
    GRPOTrainer(_cfg(model_dir, "training.max_steps=2", "algorithm.num_iterations=2"), resumed).train()
    (resumed / "summary.json").unlink()
    GRPOTrainer(_cfg(model_dir, "training.max_steps=4", "algorithm.num_iterations=2"), resumed, resume=True).train()

    def rows(run):
        return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(straight), rows(resumed)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for ma, mb in zip(a, b, strict=True):
        assert ma["reward"] == pytest.approx(mb["reward"], abs=1e-6)
        assert ma["loss"] == pytest.approx(mb["loss"], abs=1e-5)
    wa = torch.load(straight / "checkpoints" / "step-000004" / "optim.pt", weights_only=False)["optimizer"]
    wb = torch.load(resumed / "checkpoints" / "step-000004" / "optim.pt", weights_only=False)["optimizer"]
    assert wa["state"].keys() == wb["state"].keys()
    for k in wa["state"]:
        assert torch.allclose(wa["state"][k]["exp_avg"], wb["state"][k]["exp_avg"], atol=1e-6)


# ---- GPU-path options, wired and checked on CPU ------------------------------------------------------------


def test_gradient_checkpointing_with_lora_gives_the_plain_update(tiny_random_model_dir, tmp_path):
    # Both runs take the packed layout (rl.forward), so they differ in checkpointing only (AdamW turns float-rounding
    # differences of two layouts into lr-sized steps).
    model_dir = tiny_random_model_dir("qwen3_moe")
    after = {}
    for gc in (False, True):
        trainer = GRPOTrainer(_cfg(model_dir, f"model.gradient_checkpointing={str(gc).lower()}"), tmp_path / str(gc))
        assert trainer.policy.model.is_gradient_checkpointing == gc
        assert trainer.forward.layout(trainer.train_model, routing=True) == "packed"
        metrics = trainer.train_step()
        after[gc] = (_snapshot(trainer.policy.model), metrics["loss"], metrics["grad_norm"])
    (plain, loss, norm), (ckpt, loss_gc, norm_gc) = after[False], after[True]
    assert loss_gc == pytest.approx(loss, abs=1e-6) and norm_gc == pytest.approx(norm, rel=1e-5)
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-6) for n in plain)


def test_logprob_passes_halve_on_out_of_memory(tiny_random_model_dir, tmp_path):
    # num_iterations=2 needs the old policy's log-probs: a no-grad pass over all 8 rows at first
    cfg = _cfg(
        tiny_random_model_dir("deepseek_v3"), "algorithm.num_iterations=2", "training.logprob_micro_batch_size=8"
    )
    trainer = GRPOTrainer(cfg, tmp_path)
    real = trainer.forward
    sizes = []

    @contextlib.contextmanager
    def oom_above_two_rows(model, seq, **kwargs):
        if not torch.is_grad_enabled():
            sizes.append(seq.input_ids_BL.shape[0])
            if seq.input_ids_BL.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        with real(model, seq, **kwargs) as out:
            yield out

    trainer.forward = oom_above_two_rows
    metrics = trainer.train_step()
    assert math.isfinite(metrics["loss"])
    assert sizes == [8, 4, 2, 2, 2, 2] and trainer.logprob_chunks.size == 2  # halved twice, then kept


def test_adamw_8bit_is_built_from_bitsandbytes(tiny_random_model_dir, tmp_path, monkeypatch):
    import sys
    import types

    class FakeAdamW8bit(torch.optim.AdamW):
        pass

    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=FakeAdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    trainer = GRPOTrainer(_cfg(tiny_random_model_dir("deepseek_v3"), "training.optimizer=adamw_8bit"), tmp_path)
    assert isinstance(trainer.optimizer.optimizer, FakeAdamW8bit)
    assert math.isfinite(trainer.train_step()["loss"])


def test_adamw_8bit_without_bitsandbytes_says_how_to_install(monkeypatch):
    import sys

    from core.configio import ConfigError
    from rl.optim import OPTIMIZERS

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(
        ConfigError, match=r"training\.optimizer: adamw_8bit needs bitsandbytes.*`pip install bitsandb"
    ):
        OPTIMIZERS.get("adamw_8bit")(
            [torch.nn.Parameter(torch.zeros(1))],
            lr=1e-3,
            betas=[0.9, 0.99],
            weight_decay=0.0,
            device=torch.device("cpu"),
        )


def test_bf16_autocast_over_float32_weights(tiny_random_model_dir, tmp_path):
    cfg = _cfg(tiny_random_model_dir("deepseek_v3"), "training.mixed_precision=bf16")
    trainer = GRPOTrainer(cfg, tmp_path)
    assert trainer.dist.accelerator.mixed_precision == "bf16"
    seen = []
    hook = trainer.policy.model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    metrics = trainer.train_step()
    hook.remove()
    assert torch.bfloat16 in seen, "the training forward must run under bf16 autocast"
    assert math.isfinite(metrics["loss"]) and all(p.dtype == torch.float32 for p in trainer.params)


def _user_token_mean(logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len):
    """A user's loss: the plain policy-gradient surrogate, averaged over every token of the batch."""
    loss_BT = -(logp_BT - old_logp_BT.detach()).exp() * adv_B[:, None]
    return (loss_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1), {}


def _update_grads(model_dir, tmp_path, loss: str, micro: int) -> dict[str, torch.Tensor]:
    """The gradients of one ``_update`` over 8 completions of uneven lengths, in micro-batches of ``micro``."""
    from rollouts.records import Completion, Prompt, to_tensors

    cfg = _cfg(model_dir, "model.finetune=full", f"algorithm.loss={loss}", f"training.micro_batch_size={micro}")
    trainer = GRPOTrainer(cfg, tmp_path / f"{loss}-{micro}")
    g = torch.Generator().manual_seed(0)
    vocab = trainer.policy.model.config.vocab_size
    rows = [
        Completion(
            i // 4, Prompt(str(i // 4), ""), [5, 6, 7], torch.randint(10, vocab, (n,), generator=g).tolist(), "", "eos"
        )
        for i, n in enumerate([12, 3, 7, 1, 10, 5, 2, 9])
    ]
    seq = to_tensors(rows, trainer.policy.tokenizer.pad_token_id)
    grads = []
    optimizer = trainer.optimizer.optimizer  # accelerate wraps it
    named = list(trainer.policy.model.named_parameters())
    optimizer.register_step_pre_hook(
        lambda *_: grads.append({n: p.grad.clone() for n, p in named if p.grad is not None})
    )
    trainer._update(seq, torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.25, -0.25]))
    return grads[0]


def test_a_user_registered_token_mean_loss_is_normalised_as_declared(tiny_random_model_dir, tmp_path):
    """Micro-batches are weighted by the normaliser the loss declares: declared ``tokens``, a token-mean loss
    accumulated over micro-batches of 2 gives the full-batch gradient; the same function declared ``rows`` does
    not (the declaration, not the name, decides)."""
    from rl.losses import LOSSES, policy_loss

    if "test_user_token_mean" not in LOSSES:
        policy_loss("test_user_token_mean", normaliser="tokens", default_clip=None)(_user_token_mean)
        policy_loss("test_user_token_mean_as_rows", normaliser="rows", default_clip=None)(_user_token_mean)
    model_dir = tiny_random_model_dir("qwen3_moe")
    full = _update_grads(model_dir, tmp_path, "test_user_token_mean", micro=8)
    split = _update_grads(model_dir, tmp_path, "test_user_token_mean", micro=2)
    for n in full:
        torch.testing.assert_close(split[n], full[n], atol=1e-6, rtol=1e-4, msg=n)
    wrong = _update_grads(model_dir, tmp_path, "test_user_token_mean_as_rows", micro=2)
    assert any(not torch.allclose(wrong[n], full[n], atol=1e-6, rtol=1e-4) for n in full)


@pytest.mark.parametrize("mini", [8, 4])
def test_fewer_kept_rows_keep_the_schedule_and_the_on_policy_shortcut(tiny_random_model_dir, tmp_path, mini):
    """Dynamic sampling can keep fewer rows than the batch (its rounds ran out): the update still takes the planned
    number of optimizer steps (the LR schedule's), and with one mini-batch per batch it stays on-policy (no separate
    old-policy forward)."""
    from rollouts.records import Completion, Prompt, to_tensors

    cfg = _cfg(tiny_random_model_dir("qwen3_moe"), f"algorithm.mini_batch_size={mini}", "moe.telemetry=false")
    trainer = GRPOTrainer(cfg, tmp_path)
    old_forwards = []
    real = trainer._logprobs_nograd
    trainer._logprobs_nograd = lambda *a, **k: old_forwards.append(1) or real(*a, **k)
    rows = [Completion(g, Prompt(str(g), ""), [5, 6], [7, 8, 9], "", "eos") for g in range(1) for _ in range(4)]
    seq = to_tensors(rows, trainer.policy.tokenizer.pad_token_id)  # 4 rows kept of a batch of 8
    before = trainer.scheduler.last_epoch
    trainer._update(seq, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert trainer.scheduler.last_epoch - before == trainer.updates_per_step == 8 // mini
    assert old_forwards == ([] if mini == 8 else [1])


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_every_training_side_forward_runs_in_train_mode(tiny_random_model_dir, tmp_path, finetune):
    """Old policy, reference and gradient forwards share one mode (train, as TRL), at step 1 as at step 2: the model
    loads in eval mode and generation restores whatever it found, so step 1 used to score old log-probs in eval."""
    cfg = _cfg(
        tiny_random_model_dir("qwen3_moe"),
        f"model.finetune={finetune}",
        "algorithm.beta=0.05",
        "algorithm.num_iterations=2",  # an old-policy forward every step
    )
    trainer = GRPOTrainer(cfg, tmp_path)
    trainer.policy.model.eval()  # as from_pretrained leaves a full model (peft leaves LoRA in train mode)
    modes: list[tuple[str, bool]] = []
    models = {"policy": trainer.policy.model, "reference": trainer.policy.reference}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: modes.append((name, mod.training)))
        for name, m in models.items()
        if m is not None
    ]
    update = trainer._update

    def recorded_update(*args):  # only the forwards inside the update (generation runs in eval mode)
        modes.append(("update", True))
        try:
            return update(*args)
        finally:
            modes.append(("end", True))

    trainer._update = recorded_update
    try:
        for _ in range(2):
            trainer.train_step()
    finally:
        for h in hooks:
            h.remove()
    starts = [i for i, (name, _) in enumerate(modes) if name == "update"]
    ends = [i for i, (name, _) in enumerate(modes) if name == "end"]
    assert len(starts) == len(ends) == 2
    for start, end in zip(starts, ends, strict=True):
        forwards = modes[start + 1 : end]
        # the old policy and the reference (no grad), then 2 passes of gradient forwards
        assert len(forwards) >= 4, forwards
        assert all(training for _, training in forwards), forwards
        assert ("reference" in [n for n, _ in forwards]) == (finetune == "full")
