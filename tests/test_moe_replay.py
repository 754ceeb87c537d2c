"""Routing replay and router telemetry on tiny models of every supported family.

Pattern: record routing in a no-grad forward (``rl.moe.capture`` hands the routing back as data), perturb the
router weights (what an optimizer update does), then run the training forward with and without replay. Without
replay experts flip; with replay the experts each layer's ``experts`` module receives are exactly the recorded
ones, and the gate weights are the family's normalisation of the *live* logits at those experts.
"""

from __future__ import annotations

import math

import pytest
import torch

from rl.config import MoEConfig
from rl.moe.capture import TokenMap, capture_routing
from rl.moe.control import RouterControl, attach_router_control
from rl.moe.routers import ROUTER_FAMILIES, find_routers, softmax_topk_weights
from rl.zoo.models import build_char_tokenizer, tiny_model

FAMILIES = ["deepseek_v3", "qwen3_moe", "olmoe", "mixtral", "qwen2_moe"]
TOK = build_char_tokenizer()


def _batch():
    """3 rows of 12 positions; row 1 is left-padded by 4 (padding never counts)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, len(TOK), (3, 12), generator=g)
    attn = torch.ones(3, 12, dtype=torch.long)
    attn[1, :4] = 0
    ids[1, :4] = TOK.pad_token_id
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos


def _forward(model, ctl, phase, rows, batch, backward=None):
    """One padded forward over ``rows`` as the trainer runs it: replayed experts handed in for "train", the
    routing data handed to the control afterwards. ``backward(logits)`` runs inside (gradient checkpointing
    re-runs routers there)."""
    ids, attn, pos = batch
    rows_t = torch.tensor(rows)
    replay = ctl.replay_for(rows_t) if phase == "train" else None
    with capture_routing(ctl.sites, TokenMap.padded(attn[rows]), replay_BLK=replay) as routing:
        logits = model(input_ids=ids[rows], attention_mask=attn[rows], position_ids=pos[rows], use_cache=False).logits
        if backward is not None:
            backward(logits)
    (ctl.record if phase == "record" else ctl.observe)(rows_t, routing)
    return logits


def _record(model, ctl, batch):
    """Old-policy forward in two micro-batches, rows in order."""
    ctl.begin_step(batch[1])
    with torch.no_grad():
        out = torch.cat([_forward(model, ctl, "record", r, batch) for r in ([0, 1], [2])])
    return out


def _spy_experts(model):
    """Capture (top_k_index, top_k_weights) each experts module receives, by layer."""
    seen, handles = {}, []
    for site in find_routers(model):
        parent = model.get_submodule(site.name.rsplit(".", 1)[0])
        layer = site.layer

        def hook(mod, args, layer=layer):
            seen[layer] = (args[1].clone(), args[2].detach().clone())

        handles.append(parent.experts.register_forward_pre_hook(hook))
    return seen, handles


def _perturb_routers(model, scale=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in find_routers(model):
            w = s.module.weight
            w.add_(torch.randn(w.shape, generator=g) * scale * w.std())


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    torch.manual_seed(0)
    return request.param, tiny_model(request.param, TOK, seed=0).eval()


def test_every_family_is_registered(family_model):
    _, model = family_model
    sites = find_routers(model)
    assert sites and all(s.family is not None for s in sites)


def test_family_weights_match_the_router(family_model):
    """The replay weight function reproduces each router's own weights at its own choice."""
    _, model = family_model
    h = torch.randn(20, model.config.hidden_size)
    for s in find_routers(model):
        logits, weights, idx = s.module(h)
        torch.testing.assert_close(s.family.weights(s.module, logits, idx).to(weights.dtype), weights)


def test_replay_without_changes_is_the_identity(family_model):
    """Same weights: replayed forward == recorded forward (the first mini-batch's ratio is 1), flip rate 0."""
    _, model = family_model
    batch = _batch()
    ctl = RouterControl(find_routers(model), replay=True)
    rec = _record(model, ctl, batch)
    with torch.no_grad():
        rep = _forward(model, ctl, "train", [2, 0, 1], batch)
    m = ctl.end_step()
    real = batch[1][[2, 0, 1]].bool()
    torch.testing.assert_close(rep[real], rec[[2, 0, 1]][real], rtol=1e-5, atol=1e-5)
    assert m["moe/flip_rate"] == 0.0 and m["moe/replay_override_rate"] == 0.0


@pytest.mark.parametrize("replay", [False, True])
def test_replay_forces_recorded_experts_after_router_update(family_model, replay):
    name, model0 = family_model
    model = tiny_model(name, TOK, seed=0).eval()
    model.load_state_dict(model0.state_dict())
    batch = _batch()
    ctl = RouterControl(find_routers(model), replay=replay)
    seen, handles = _spy_experts(model)
    try:
        _record(model, ctl, batch)
        recorded = {layer: t.clone() for layer, t in ctl._recorded.items()}
        _perturb_routers(model)
        rows = [1, 2]  # a different micro-batch composition than the recording's
        _forward(model, ctl, "train", rows, batch)
        m = ctl.end_step()
    finally:
        for h in handles:
            h.remove()
    if not replay:
        assert m["moe/flip_rate"] > 0.05, "the perturbation should move some tokens to other experts"
        return
    assert m["moe/flip_rate"] == 0.0
    assert m["moe/replay_override_rate"] > 0.05
    for site in find_routers(model):
        idx, w = seen[site.layer]
        want = recorded[site.layer][rows].reshape(idx.shape).long()
        assert torch.equal(idx, want), f"{name} layer {site.layer}: experts were not forced"
        assert torch.isfinite(w).all()


def test_replay_weights_come_from_live_logits():
    """qwen3_moe: the forced gates are softmax(live logits) at the recorded experts, renormalised."""
    model = tiny_model("qwen3_moe", TOK, seed=0).eval()
    site = find_routers(model)[0]
    h = torch.randn(6, model.config.hidden_size)
    ctl = RouterControl([site], replay=True)
    tokens, rows = TokenMap.padded(torch.ones(1, 6, dtype=torch.long)), torch.tensor([0])
    ctl.begin_step(torch.ones(1, 6, dtype=torch.long))
    with capture_routing([site], tokens) as routing:
        _, _, rec_idx = site.module(h)
    ctl.record(rows, routing)
    _perturb_routers(model, scale=2.0)
    with capture_routing([site], tokens, replay_BLK=ctl.replay_for(rows)):
        live_logits, w, idx = site.module(h)
    assert torch.equal(idx, rec_idx)
    norm = model.config.norm_topk_prob
    expected = softmax_topk_weights(live_logits, rec_idx, norm_topk_prob=norm).to(w.dtype)
    torch.testing.assert_close(w, expected)


@pytest.mark.parametrize("name", ["deepseek_v3", "mixtral"])
def test_router_still_learns_under_replay(name):
    """Gradients reach the router weights through the recomputed gate weights (full fine-tuning)."""
    model = tiny_model(name, TOK, seed=0).train()
    batch = _batch()
    ctl = RouterControl(find_routers(model), replay=True)
    _record(model, ctl, batch)
    _forward(model, ctl, "train", [0, 1, 2], batch, backward=lambda lg: lg.float().logsumexp(-1).mean().backward())
    ctl.end_step()
    for s in find_routers(model):
        assert s.module.weight.grad is not None and s.module.weight.grad.abs().sum() > 0


def test_replay_through_peft_lora_and_gradient_checkpointing():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("qwen3_moe", TOK, seed=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    sites = find_routers(model)
    assert sites and all(s.name.startswith("base_model.model.") for s in sites)
    ctl = attach_router_control(model, MoEConfig(routing_replay=True))
    calls = []
    spies = [s.module.register_forward_hook(lambda *a: calls.append(1)) for s in sites]
    batch = _batch()
    try:
        _record(model, ctl, batch)
        _perturb_routers(model)
        model.train()
        calls.clear()
        # backward re-runs each layer's forward inside the capture: replayed again, counted once
        _forward(model, ctl, "train", [2, 1], batch, backward=lambda lg: lg.float().logsumexp(-1).mean().backward())
        compared = ctl._compared
        m = ctl.end_step()
    finally:
        for h in spies:
            h.remove()
    assert len(calls) == 2 * len(sites), "gradient checkpointing should have re-run every router"
    assert compared == len(sites) * int(batch[1][[2, 1]].sum())
    assert m["moe/flip_rate"] == 0.0 and m["moe/replay_override_rate"] > 0
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_telemetry_loads_and_no_flips_on_identical_weights():
    model = tiny_model("olmoe", TOK, seed=0).eval()
    batch = _batch()
    ctl = RouterControl(find_routers(model), replay=False)
    _record(model, ctl, batch)
    with torch.no_grad():
        _forward(model, ctl, "train", [0, 1, 2], batch)
    m = ctl.end_step()
    assert m["moe/flip_rate"] == 0.0
    load = torch.tensor(m["moe/expert_load"])
    assert load.shape == (4, 8) and torch.allclose(load.sum(-1), torch.ones(4, dtype=load.dtype))
    assert 1.0 <= m["moe/load_max_over_mean"] <= 8.0
    assert all(0 < m[f"moe/load_entropy/layer_{i}"] <= 1 for i in range(4))
    assert m["moe/expert_load_layers"] == [0, 1, 2, 3]


def test_no_hook_outside_a_forward():
    """Generation, evaluation and the reference forward see the model's own routing: the capture's hooks exist
    only inside the training forward."""
    model = tiny_model("mixtral", TOK, seed=0).eval()
    batch = _batch()
    with torch.no_grad():
        before = model(input_ids=batch[0], attention_mask=batch[1]).logits
    ctl = RouterControl(find_routers(model), replay=True)
    _record(model, ctl, batch)
    _perturb_routers(model)
    ctl.end_step()
    assert all(not s.module._forward_hooks for s in ctl.sites)
    with torch.no_grad():
        after = model(input_ids=batch[0], attention_mask=batch[1]).logits
    assert not torch.allclose(before, after)  # the perturbed routers' own choice, not the recorded experts


def test_unsupported_router_class_is_named():
    class WeirdRouter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(4, 8))

        def forward(self, h):
            return h @ self.weight.T

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate, self.experts = WeirdRouter(), torch.nn.Identity()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block()])

    with pytest.raises(ValueError, match="WeirdRouter"):
        attach_router_control(Model(), MoEConfig(routing_replay=True))
    with pytest.raises(ValueError, match="no MoE routers"):
        attach_router_control(torch.nn.Linear(2, 2), MoEConfig(routing_replay=True))
    assert "WeirdRouter" not in ROUTER_FAMILIES


def test_freeze_router():
    model = tiny_model("deepseek_v3", TOK, seed=0)
    attach_router_control(model, MoEConfig(freeze_router=True, telemetry=False))
    assert all(not p.requires_grad for s in find_routers(model) for p in s.module.parameters())
    assert any(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------ through the trainer
def _trainer_cfg(model_dir: str, *extra: str):
    from pathlib import Path

    from rl.config import load_recipe

    reward = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"
    return load_recipe(
        None,
        [
            f"model.name_or_path={model_dir}",
            "model.finetune=full",
            "data.task=arith",
            "data.num_train=64",
            "data.num_eval=0",
            "rollout.max_new_tokens=10",
            "algorithm.num_generations=4",
            "algorithm.batch_size=8",
            f"rewards.rules=[{{name: '{reward}'}}]",
            "training.max_steps=1",
            "training.lr=0.02",
            "training.torch_threads=2",
            "logging.progress=false",
            *extra,
        ],
    )


def test_trainer_replay_on_policy_ratio_is_one(tiny_random_model_dir, tmp_path):
    """Replay adds the recording forward to an on-policy step; its single update's GSPO ratio is 1 (no clipping
    even at GSPO's 3e-4 range) and no expert flips."""
    from rl.trainer import GRPOTrainer

    cfg = _trainer_cfg(tiny_random_model_dir("qwen2_moe"), "algorithm.loss=gspo", "moe.routing_replay=true")
    m = GRPOTrainer(cfg, tmp_path).train_step()
    assert abs(m["ratio_mean"] - 1) < 1e-5 and m["clip_frac"] == 0.0
    assert m["moe/flip_rate"] == 0.0 and m["moe/replay_override_rate"] == 0.0


@pytest.mark.parametrize("replay", [False, True])
def test_trainer_off_policy_flip_rate(tiny_random_model_dir, tmp_path, replay):
    """Two passes in mini-batches of 4: later updates see moved routers. Flips > 0 without replay, exactly 0 with."""
    from rl.trainer import GRPOTrainer

    cfg = _trainer_cfg(
        tiny_random_model_dir("deepseek_v3"),
        "algorithm.num_iterations=2",
        "algorithm.mini_batch_size=4",
        f"moe.routing_replay={str(replay).lower()}",
        "moe.router_aux_loss_coef=0.01",
    )
    m = GRPOTrainer(cfg, tmp_path).train_step()
    assert math.isfinite(m["loss"]) and m["moe/aux_loss"] > 0
    assert len(m["moe/expert_load"]) == 3 and m["moe/expert_load_layers"] == [1, 2, 3]  # layer 0 is dense
    if replay:
        assert m["moe/flip_rate"] == 0.0 and m["moe/replay_override_rate"] > 0
    else:
        assert m["moe/flip_rate"] > 0


def test_load_balancing_loss_matches_transformers_for_one_layer():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    from rl.moe.metrics import load_balancing_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2 * 5, 8, generator=g)
    mask = torch.ones(2, 5)
    mask[0, :2] = 0
    idx = torch.softmax(logits, -1).topk(2, dim=-1).indices
    ours = load_balancing_loss(torch.softmax(logits, -1), idx, mask.reshape(-1))
    theirs = load_balancing_loss_func((logits,), 8, 2, mask)
    torch.testing.assert_close(ours, theirs)
