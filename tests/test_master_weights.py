"""float32 master weights under bf16 full fine-tuning (``rl.optim.MasterWeights``): small updates survive.

The arithmetic is made exact by AdamW with betas (0, 0): the moments are the gradient itself and its square, so
every step is ``lr * g / (|g| + eps)``, i.e. ``lr`` for ``g = 1`` (eps = 1e-8 moves it by 1e-8 relative, far below
any rounding that matters here). Below 1.0, bf16 values are 2^-8 apart and float32 values 2^-24 apart.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from rl.config import load_recipe
from rl.optim import MasterWeights, make_optimizer
from rl.trainer import GRPOTrainer

CPU = torch.device("cpu")
REWARD = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"
SIGN_DESCENT = {"betas": (0.0, 0.0), "weight_decay": 0.0, "device": CPU}  # every AdamW step is lr * sign(g)


def _param(value: float = 1.0, dtype=torch.bfloat16) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([value], dtype=dtype))


def _steps(opt, p: torch.nn.Parameter, n: int, scheduler=None) -> None:
    for _ in range(n):
        p.grad = torch.ones_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()


def _copy(state_dict):
    """A checkpoint's round trip: through torch.save / torch.load, as rl.checkpoint stores it."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_a_1e6_relative_update_is_rounded_away_in_bf16_and_kept_by_the_master():
    plain_p = _param()
    plain = torch.optim.AdamW([plain_p], lr=1e-6, betas=(0.0, 0.0), weight_decay=0.0)
    _steps(plain, plain_p, 1)
    assert plain_p.item() == 1.0, "the failure mode: 1 - 1e-6 rounds back to 1.0 in bf16 (spacing 2^-8 below 1)"

    p = _param()
    opt = make_optimizer("adamw", [p], lr=1e-6, **SIGN_DESCENT)
    assert isinstance(opt, MasterWeights)
    _steps(opt, p, 1)
    master = opt.masters[0][0]
    assert master.dtype == torch.float32 and master.item() == torch.tensor(1 - 1e-6).item()  # float32's nearest
    assert p.dtype == torch.bfloat16 and p.item() == 1.0  # still the nearest bf16 value
    assert p.grad is None and master.grad is None  # zero_grad cleared the model's; step dropped its float32 copy


def test_updates_below_the_bf16_spacing_add_up_to_a_bf16_step():
    lr, n = 2.0**-20, 4096  # 4096 steps of 2^-20 = 2^-8: one bf16 spacing below 1.0
    plain_p = _param()
    plain = torch.optim.AdamW([plain_p], lr=lr, betas=(0.0, 0.0), weight_decay=0.0)
    _steps(plain, plain_p, n)
    assert plain_p.item() == 1.0, "without masters every one of the 4096 updates is rounded away"

    p = _param()
    opt = make_optimizer("adamw", [p], lr=lr, **SIGN_DESCENT)
    _steps(opt, p, n // 2 - 1)  # 2047 * 2^-20 is just short of half the spacing: bf16 still rounds to 1.0
    assert opt.masters[0][0].item() == 1 - (n // 2 - 1) * lr and p.item() == 1.0
    _steps(opt, p, n // 2 + 1)
    assert opt.masters[0][0].item() == 1 - n * lr == 1 - 2**-8  # exact: each step is 16 float32 spacings
    assert p.item() == 1 - 2**-8


def test_the_lr_the_scheduler_sets_is_the_one_the_masters_move_by():
    p = _param()
    opt = make_optimizer("adamw", [p], lr=2.0**-20, **SIGN_DESCENT)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda update: 0.5**update)
    _steps(opt, p, 3, scheduler)
    assert opt.masters[0][0].item() == 1 - 2.0**-20 * (1 + 0.5 + 0.25)
    assert opt.inner.param_groups[0]["lr"] == 2.0**-20 * 0.25  # the last step's; the outer group holds the next
    assert opt.param_groups[0]["lr"] == 2.0**-20 * 0.125


def test_a_loaded_state_dict_continues_from_the_masters_not_the_rounded_weights():
    lr = 2.0**-16  # 128 times below half the bf16 spacing: every update alone rounds away
    p = _param()
    opt = make_optimizer("adamw", [p], lr=lr, betas=(0.9, 0.999), weight_decay=0.01, device=CPU)
    _steps(opt, p, 5)
    saved = _copy(opt.state_dict())
    assert p.item() == 1.0 and opt.masters[0][0].item() < 1.0, "the test needs a master the bf16 weight cannot hold"

    q = _param(p.item())  # a resumed run: weights from the checkpoint's (bf16) safetensors, then the optimizer
    resumed = make_optimizer("adamw", [q], lr=lr, betas=(0.9, 0.999), weight_decay=0.01, device=CPU)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.masters[0][0], opt.masters[0][0])
    _steps(opt, p, 200)
    _steps(resumed, q, 200)
    assert torch.equal(resumed.masters[0][0], opt.masters[0][0]) and torch.equal(q, p)
    state, resumed_state = opt.inner.state_dict()["state"][0], resumed.inner.state_dict()["state"][0]
    assert all(torch.equal(state[k], resumed_state[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert p.item() == 1 - 2**-8, "205 updates of ~2^-16 (3.1e-3) cross half a bf16 spacing (2^-9 = 2.0e-3)"


def test_a_plain_optimizer_state_from_before_master_weights_loads():
    p = _param(0.5)
    plain = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    _steps(plain, p, 2)
    opt = make_optimizer("adamw", [p], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, device=CPU)
    opt.load_state_dict(_copy(plain.state_dict()))
    assert torch.equal(opt.masters[0][0], p.detach().float())  # the masters start from the loaded weights
    assert torch.equal(opt.inner.state[opt.masters[0][0]]["exp_avg"], plain.state[p]["exp_avg"].float())


def test_float32_parameters_and_sharded_runs_get_the_plain_optimizer():
    assert type(make_optimizer("adamw", [_param(dtype=torch.float32)], lr=1e-3, **SIGN_DESCENT)) is torch.optim.AdamW
    sharded = make_optimizer("adamw", [_param()], lr=1e-3, sharded=True, **SIGN_DESCENT)
    assert type(sharded) is torch.optim.AdamW  # FSDP / DeepSpeed keep float32 masters themselves


def test_float32_parameters_beside_bf16_ones_are_stepped_in_place():
    bf, f32 = _param(), _param(dtype=torch.float32)
    opt = make_optimizer("adamw", [bf, f32], lr=1e-6, **SIGN_DESCENT)
    assert opt.masters[0][1].data_ptr() == f32.data_ptr()  # no second copy of a float32 weight
    for t in (bf, f32):
        t.grad = torch.ones_like(t)
    opt.step()
    assert bf.item() == 1.0 and f32.item() == opt.masters[0][0].item() == torch.tensor(1 - 1e-6).item()


def test_bf16_full_finetune_trains_float32_masters(tiny_random_model_dir, tmp_path):
    cfg = load_recipe(
        None,
        [
            f"model.name_or_path={tiny_random_model_dir('deepseek_v3')}",
            "model.dtype=bfloat16",
            "model.finetune=full",
            "data.num_train=16",
            "data.num_eval=4",
            "rollout.max_new_tokens=8",
            "algorithm.num_generations=4",
            "algorithm.batch_size=8",
            f"rewards.rules=[{{name: '{REWARD}'}}]",
            "training.max_steps=1",
            "training.lr=0.01",
            "training.torch_threads=2",
            "logging.progress=false",
        ],
    )
    trainer = GRPOTrainer(cfg, tmp_path)
    opt = trainer.optimizer.optimizer  # accelerate wraps it
    assert isinstance(opt, MasterWeights) and isinstance(opt.inner, torch.optim.AdamW)
    params, masters = opt.param_groups[0]["params"], opt.masters[0]
    assert params == trainer.params and all(m.dtype == torch.float32 for m in masters)
    # DeepSeek-V3's router gates stay float32 in a bf16 model (transformers keeps them so): stepped in place
    assert {p.dtype for p in params} == {torch.bfloat16, torch.float32}
    before = [m.clone() for m in masters]
    metrics = trainer.train_step()
    assert math.isfinite(metrics["loss"])
    assert any(not torch.equal(b, m) for b, m in zip(before, masters, strict=True)), "no master moved"
    assert all(torch.equal(p, m.to(p.dtype)) for p, m in zip(params, masters, strict=True))
    trainer.step = 1
    trainer.save_checkpoint()

    resumed = GRPOTrainer(cfg, tmp_path, resume=True)
    loaded = resumed.optimizer.optimizer.masters[0]
    assert all(torch.equal(a, b) for a, b in zip(masters, loaded, strict=True)), "resume must restore the masters"
