from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import rollouts
from rewards.scoring import RewardColumn, RewardScores
from rl.config import load_recipe
from rl.runlog import read_metrics
from rl.zoo.quickrun import FAST, REPO_ROOT, TINY_RECIPE
from rollouts.store import RolloutStore, rollout_table, step_path, stored_steps

FIXED = [
    "step",
    "group_id",
    "prompt_id",
    "prompt",
    "completion",
    "reward",
    "advantage",
    "num_tokens",
    "finish_reason",
    "mean_logprob",
    "completion_ids",
]


def test_rollout_table_columns_and_values(fake_step):
    batch, scores, adv_B = fake_step(7, n_groups=2, G=4)
    df = rollout_table(7, batch, scores, adv_B).to_pandas()
    assert set(FIXED) | {"reward/acc", "reward/fmt", "reward_info/acc", "reward_info/fmt", "data/answer"} == set(df)
    assert len(df) == 8 and (df["step"] == 7).all()
    assert df["group_id"].tolist() == [700] * 4 + [701] * 4
    # Totals are weighted sums: k=0 -> 1 + 0.5; k=1 -> none, as fmt (weight 0.5) abstained (rewards.scoring).
    assert df["reward"].iloc[0] == 1.0 + 0.5 * 1.0
    assert math.isnan(df["reward"].iloc[1])
    assert math.isnan(df["reward"].iloc[5])  # both rewards abstained: null total
    assert math.isnan(df["reward/fmt"].iloc[1])
    assert json.loads(df["reward_info/acc"].iloc[1]) == {"extracted": "0", "gold": "1"}
    assert df["mean_logprob"].iloc[1] == (-0.5 * 2 + -1.5 * 2) / 2
    assert math.isnan(df["mean_logprob"].iloc[3])  # no logprobs recorded
    assert df["num_tokens"].tolist()[:4] == [2, 3, 4, 5]
    assert [list(ids) for ids in df["completion_ids"][:2]] == [[7, 7], [7, 7, 7]]  # what rescoring passes again
    assert df["finish_reason"].tolist()[:4] == ["eos", "eos", "eos", "length"]
    assert df["advantage"].tolist()[:2] == [0.5, -0.5]
    assert df["data/answer"].tolist() == ["1"] * 4 + ["2"] * 4


def test_max_groups_keeps_whole_groups_in_batch_order(fake_step):
    batch, scores, adv_B = fake_step(1, n_groups=3, G=4)
    df = rollout_table(1, batch, scores, adv_B, max_groups=2).to_pandas()
    assert df["group_id"].tolist() == [100] * 4 + [101] * 4
    assert df["advantage"].tolist() == adv_B[:8].tolist()


def test_every_samples_steps(tmp_path, fake_step):
    store = RolloutStore(tmp_path, every=2)
    written = [store.write(s, *fake_step(s)) for s in (1, 2, 3, 4)]
    assert [p is not None for p in written] == [False, True, False, True]
    assert stored_steps(tmp_path) == [2, 4]
    assert RolloutStore(tmp_path / "never", every=0).write(1, *fake_step(1)) is None


def test_extra_columns_hook_stores_per_completion_values(fake_step):
    batch, scores, adv_B = fake_step(1, n_groups=2, G=2)
    counts = [[i, 4 - i] for i in range(4)]  # e.g. tokens routed to each of 2 experts
    df = rollout_table(1, batch, scores, adv_B, max_groups=1, extra={"moe/expert_counts": counts}).to_pandas()
    assert [list(v) for v in df["moe/expert_counts"]] == counts[:2]
    with pytest.raises(ValueError, match="3 moe/x for 4 completions"):
        rollout_table(1, batch, scores, adv_B, extra={"moe/x": [1, 2, 3]})


def test_mixed_type_dataset_column_is_stored_as_json(fake_step):
    batch, scores, adv_B = fake_step(1, n_groups=2, G=1)
    batch.completions[0].prompt.columns["tests"] = [{"in": "1", "out": 2}]
    batch.completions[1].prompt.columns["tests"] = "assert f(1) == 2"
    df = rollout_table(1, batch, scores, adv_B).to_pandas()
    assert df["data/tests"].tolist() == ['[{"in": "1", "out": 2}]', '"assert f(1) == 2"']


def test_load_round_trip_and_step_selection(fake_run_dir):
    df = rollouts.load(fake_run_dir)
    assert df["step"].tolist() == [1] * 8 + [2] * 8 + [3] * 8
    assert rollouts.load(fake_run_dir, steps=2)["step"].unique().tolist() == [2]
    assert rollouts.load(fake_run_dir, steps=[3, 1])["step"].unique().tolist() == [1, 3]
    with pytest.raises(FileNotFoundError, match=r"step\(s\) \[5\].*stored: 1-3"):
        rollouts.load(fake_run_dir, steps=[1, 5])
    with pytest.raises(FileNotFoundError, match="no rollouts stored"):
        rollouts.load(fake_run_dir / "nowhere")


def test_load_dataset_matches_load(fake_run_dir):
    ds = rollouts.load_dataset(fake_run_dir, steps=[1, 2])
    df = rollouts.load(fake_run_dir, steps=[1, 2])
    assert ds.num_rows == len(df) == 16
    assert ds.column_names == list(df.columns)
    assert ds["completion"] == df["completion"].tolist()


def test_columns_added_later_are_null_in_earlier_steps(tmp_path, fake_step):
    store = RolloutStore(tmp_path)
    store.write(1, *fake_step(1))
    batch, scores, adv_B = fake_step(2)
    late = RewardColumn("late", (1.0,) * len(batch), ({},) * len(batch))
    scores = RewardScores((*scores.rewards, late), scores.total)  # a reward added to the recipe on resume
    store.write(2, batch, scores, adv_B)
    df = rollouts.load(tmp_path)
    assert df.loc[df.step == 1, "reward/late"].isna().all()
    assert (df.loc[df.step == 2, "reward/late"] == 1.0).all()


def test_load_ignores_files_being_written(fake_run_dir):
    folder = fake_run_dir / "rollouts"
    (folder / ".step-000004.parquet.abc123.tmp").write_bytes(b"PAR1 half a file")  # a write in progress
    (folder / "notes.txt").write_text("not a step")
    assert stored_steps(fake_run_dir) == [1, 2, 3]
    assert len(rollouts.load(fake_run_dir)) == 24


def test_failed_write_keeps_the_previous_file(tmp_path, fake_step, monkeypatch):
    store = RolloutStore(tmp_path)
    store.write(1, *fake_step(1))
    before = step_path(tmp_path, 1).read_bytes()

    def dies_halfway(table, f, **kw):
        f.write(b"PAR1 partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C mid-write

    monkeypatch.setattr(pq, "write_table", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        store.write(1, *fake_step(1, n_groups=1))
    assert step_path(tmp_path, 1).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["step-000001.parquet"]


def test_truncate_after_drops_steps_a_resume_will_rerun(fake_run_dir):
    RolloutStore(fake_run_dir).truncate_after(1)
    assert stored_steps(fake_run_dir) == [1]


@pytest.mark.slow
def test_tiny_run_stores_every_completion(tiny_run_dir):
    cfg = load_recipe(tiny_run_dir / "config.yaml")
    a = cfg.algorithm
    df = rollouts.load(tiny_run_dir)
    assert stored_steps(tiny_run_dir) == list(range(1, cfg.training.max_steps + 1))  # rollouts_every = 1
    assert df.groupby("step").size().unique().tolist() == [a.batch_size]  # every completion of every step
    assert df.groupby("step")["group_id"].nunique().unique().tolist() == [a.prompts_per_step]
    names = [r.label for r in cfg.rewards.rules]
    per_reward = {f"reward/{n}" for n in names} | {f"reward_info/{n}" for n in names}
    assert set(FIXED) | per_reward | {"data/answer"} <= set(df)
    # The stored total is the recipe's weighted sum, and the advantages are group-relative.
    expected = sum(r.weight * df[f"reward/{r.label}"].fillna(0.0) for r in cfg.rewards.rules)
    assert (df["reward"] - expected).abs().max() < 1e-9
    assert df.groupby(["step", "group_id"])["advantage"].sum().abs().max() < 1e-3
    assert df["mean_logprob"].notna().all() and (df["mean_logprob"] <= 0).all()
    # Every group is kept (no dynamic sampling) and there is no dropout: the training forward's mean log-prob of each
    # completion is the sampler's, within float rounding.
    assert df["train_mean_logprob"].notna().all()
    assert (df["train_mean_logprob"] - df["mean_logprob"]).abs().max() < 1e-4
    assert set(df["finish_reason"]) <= {"eos", "length"}
    info = json.loads(df["reward_info/math_accuracy"].iloc[0])
    assert info["gold"] == df["data/answer"].iloc[0]
    # Metrics and rollouts tell the same story: the per-step mean of the stored rewards is the logged reward.
    logged = {m["step"]: m["reward"] for m in read_metrics(tiny_run_dir / "metrics.jsonl")}
    assert df.groupby("step")["reward"].mean().to_dict() == pytest.approx(logged, rel=1e-5)


@pytest.mark.slow
def test_sigkill_mid_run_leaves_earlier_steps_loadable(tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rl.cli", "train", str(TINY_RECIPE), "--output-dir", str(run)]
    for item in ("training.max_steps=200", *FAST):
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 900
        while len(stored_steps(run)) < 2:
            assert proc.poll() is None, f"training exited early with {proc.returncode}"
            assert time.time() < deadline, "no two step files after 15 minutes"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    steps = stored_steps(run)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
    df = rollouts.load(run)
    assert df.groupby("step").size().tolist() == [16] * len(steps)
    # A step's rollouts are stored before its metrics line is appended, so metrics may be one step behind.
    logged = [m["step"] for m in read_metrics(run / "metrics.jsonl")]
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= len(steps) - 1
    assert all(Path(p).suffix in (".parquet", ".tmp") for p in os.listdir(run / "rollouts"))
