"""Shared fixtures.

``tiny_run_dir``: one short real training run per test session (through ``r1kit train``, TensorBoard on), shared
by every test that needs a real run directory, so the suite trains once.
``fake_step`` / ``fake_run_dir``: hand-made rollouts and metrics for fast tests of what reads a run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewards.scoring import RewardScores, weighted_total
from rl.quickrun import train_tiny
from rollouts.records import Completion, Prompt, RolloutBatch
from rollouts.store import RolloutStore


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step run of recipes/r1_zero_tiny.yaml (2 prompts x 8 completions per step) through ``r1kit train``."""
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    return train_tiny(run_dir, steps=3, overrides=["logging.trackers=[tensorboard]"])


def make_step(step: int, n_groups: int = 2, G: int = 4) -> tuple[RolloutBatch, RewardScores, torch.Tensor]:
    """A scored batch of ``n_groups`` groups of ``G``: rewards ``acc`` (weight 1) and ``fmt`` (weight 0.5).

    In every group, completion k answers right when k is even; ``fmt`` abstains on k == 1 and ``acc`` too in the
    last group's k == 1 (so that row's total is None); k == G - 1 was cut at max_new_tokens and has no logprobs;
    k == 2 holds rich markup, which must print literally.
    """
    comps, acc, fmt, info = [], [], [], []
    for g in range(n_groups):
        gid = step * 100 + g
        prompt = Prompt(f"p{gid}", f"Q: {g}+1\nA:", {"answer": str(g + 1)})
        for k in range(G):
            answer = g + 1 if k % 2 == 0 else 0
            text = f"<think>{g}+1={g + 1}</think><answer>{answer}</answer>" + (" [bold]x[/bold]" if k == 2 else "")
            logprobs = None if k == G - 1 else [-0.5 * (k + 1), -1.5 * (k + 1)]
            finish = "length" if k == G - 1 else "eos"
            comps.append(Completion(gid, prompt, [1, 2], [7] * (2 + k), text, finish, logprobs))
            abstain_all = g == n_groups - 1 and k == 1
            acc.append(None if abstain_all else float(k % 2 == 0))
            fmt.append(None if k == 1 else 1.0)
            info.append({"extracted": str(answer), "gold": str(g + 1)})
    values = {"acc": acc, "fmt": fmt}
    scores = RewardScores(values, {"acc": info, "fmt": [{} for _ in fmt]}, {"acc": 0, "fmt": 0},
                          weighted_total(values, {"acc": 1.0, "fmt": 0.5}))  # fmt: skip
    adv_B = torch.tensor([0.5 if k % 2 == 0 else -0.5 for _ in range(n_groups) for k in range(G)])
    return RolloutBatch(comps), scores, adv_B


@pytest.fixture
def fake_step():
    return make_step


@pytest.fixture
def fake_run_dir(tmp_path: Path) -> Path:
    """3 steps of ``make_step`` rollouts, and metrics with every plotted key (KL, entropy, MoE expert load)."""
    run = tmp_path / "run"
    store = RolloutStore(run)
    lines = []
    for step in (1, 2, 3):
        store.write(step, *make_step(step))
        lines.append({
            "step": step, "reward": 0.2 * step, "reward/acc": 0.1 + 0.2 * step, "reward/fmt": 0.9,
            "reward/acc/abstain_frac": 0.0, "kl": 0.01 * step, "clip_frac": 0.02, "entropy": 1.0 - 0.1 * step,
            "completion_len": 10.0 + step, "completion_len_max": 20, "truncated_frac": 0.25,
            "moe/expert_load": [[0.25, 0.25, 0.4, 0.1], [0.1 * step, 0.3, 0.3, 0.4 - 0.1 * step]],
        })  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return run
