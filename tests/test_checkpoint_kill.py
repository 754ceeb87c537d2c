"""SIGKILL at any moment of a checkpoint write leaves the previous checkpoint loadable and nothing half-written."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from rl.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

WRITER = textwrap.dedent(
    """
    import sys, torch
    from rl.checkpoint import save_checkpoint
    root = sys.argv[1]
    model = torch.nn.Linear(512, 512)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 512)).sum().backward(); opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(__import__("pathlib").Path(root), step, model, opt, sched, {"data_position": step}, keep=2)
        print(step, flush=True)
    """
)


def _fresh():
    model = torch.nn.Linear(512, 512)
    opt = torch.optim.AdamW(model.parameters())
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


@pytest.mark.parametrize("trial", range(4))
def test_sigkill_during_checkpoint_writes(tmp_path, trial):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # at least one checkpoint completed
        time.sleep(random.Random(trial).uniform(0.0, 0.6))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None
    model, opt, sched = _fresh()
    state = load_checkpoint(ckpt, model, opt, sched)
    step = state["step"]
    assert state["data_position"] == step
    assert torch.all(model.weight == step), "weights must be those of the checkpoint's own step"
    for p in list_checkpoints(tmp_path):  # every visible checkpoint is complete
        load_checkpoint(p, *_fresh())


def test_leftover_temp_dirs_are_ignored_and_pruned(tmp_path):
    model, opt, sched = _fresh()
    (tmp_path / ".step-000009.tmp-abc").mkdir(parents=True)
    save_checkpoint(tmp_path, 1, model, opt, sched, {}, keep=1)
    save_checkpoint(tmp_path, 2, model, opt, sched, {}, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000002"]
