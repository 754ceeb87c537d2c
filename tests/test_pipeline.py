"""``r1kit pipeline``: the file's checks, stage chaining and resume on a tiny random model (fast), and the tiny
R1 pipeline's acceptance from an empty cache (slow: the numbers the README's table shows)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.configio import ConfigError
from rl import pipeline
from rl.cli import main
from rl.pipeline import load_pipeline, run_pipeline

REPO = Path(__file__).parents[1]


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "p_pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def mini(model_dir: str) -> dict:
    """Every stage kind, chained as the R1 pipeline chains them, each a step or two on a random tiny model."""
    return {
        "shared": {
            "model": {"name_or_path": model_dir, "finetune": "lora"},
            "data": {"task": "arith", "num_train": 16, "num_eval": 4},
            "rollout": {"max_new_tokens": 12},
            "algorithm": {"num_generations": 2, "batch_size": 4},
            "training": {"max_steps": 1, "torch_threads": 2},
            "logging": {"progress": False, "save_every": 0, "plots": False},
        },
        "eval": {"k": 2},
        "stages": [
            {"name": "cold", "kind": "sft", "recipe": {"sft": {"task": "arith", "num_rows": 8, "batch_size": 4}}},
            {"name": "rl", "kind": "grpo", "init": "cold"},
            # a random model is rarely right and never stops: keep every sample, so the next stage has rows
            {
                "name": "rs",
                "kind": "sample",
                "init": "rl",
                "recipe": {
                    "sample": {
                        "k": 2,
                        "limit": 4,
                        "require_correct": False,
                        "require_format": False,
                        "drop_truncated": False,
                    },
                    "rollout": {"max_new_tokens": 12},
                },
            },
            {"name": "sft_base", "kind": "sft", "data": "rs", "recipe": {"sft": {"batch_size": 4}}},
        ],
    }


# --------------------------------------------------------------------------------------------------- the file
@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda d: d["stages"].append({"name": "x", "kind": "dpo"}), "stages[4].kind"),
        (lambda d: d["stages"].append({"name": "cold", "kind": "sft"}), "stages[4] (cold).name"),
        (lambda d: d["stages"][1].update(init="later"), "stages[1] (rl).init"),
        (lambda d: d["stages"][1].update(data="rs"), "stages[1] (rl).data"),
        (lambda d: d["stages"][3].update(data="cold"), "stages[3] (sft_base).data"),
        (
            lambda d: d["stages"][1].update(recipe={"training": {"lrr": 1}}),
            "stages[1] (rl).recipe: unknown key 'training.lrr'",
        ),
        (lambda d: d["stages"][1].update(recipe={"training": {"lr": -1}}), "stages[1] (rl).recipe: training.lr"),
        (lambda d: d.update(stagez=[]), "stagez"),
        (lambda d: d.update(stages=[]), "stages"),
    ],
)
def test_a_bad_pipeline_file_names_the_key(tmp_path, change, names):
    doc = mini("some/model")
    change(doc)
    with pytest.raises(ConfigError, match=re.escape(names)):
        load_pipeline(write(tmp_path, doc))


def test_the_cli_answers_a_bad_file_with_exit_code_2(tmp_path, capsys):
    doc = mini("some/model")
    doc["stages"][1]["init"] = "nowhere"
    assert main(["pipeline", str(write(tmp_path, doc))]) == 2
    assert "stages[1] (rl).init" in capsys.readouterr().err


def test_stage_recipes_point_at_the_stages_they_name(tmp_path):
    cfg = load_pipeline(write(tmp_path, mini("some/model")))
    run = tmp_path / "run"
    rl = pipeline.stage_recipe(cfg, 1, folder=tmp_path, run_dir=run)
    assert rl.model.name_or_path == str(run / "01_cold" / "model")
    sft = pipeline.stage_recipe(cfg, 3, folder=tmp_path, run_dir=run)
    assert sft.sft.dataset == str(run / "03_rs" / "samples.jsonl") and sft.sft.task is None
    assert sft.model.name_or_path == "some/model"  # init: null -> the shared base
    assert sft.training.max_steps == 1 and sft.sft.batch_size == 4  # shared, then the stage's own keys


def test_the_shipped_pipelines_load():
    for path in sorted(REPO.joinpath("recipes").glob("*_pipeline.yaml")):
        cfg = load_pipeline(path)
        kinds = [s.kind for s in cfg.stages]
        assert kinds[:5] == ["sft", "grpo", "sample", "sft", "grpo"], path.name  # R1's order


# ---------------------------------------------------------------------------------------------------- running
def test_a_pipeline_runs_every_kind_and_resumes_after_a_crash(tmp_path, tiny_random_model_dir, monkeypatch):
    """Killed in the middle of its GRPO stage (after that stage's step-1 checkpoint), the pipeline resumes there:
    the finished cold start is not run again, the GRPO stage continues from step 1, and every later stage runs."""
    from rl.trainer import GRPOTrainer

    doc = mini(tiny_random_model_dir("qwen3_moe"))
    doc["stages"][1]["recipe"] = {"training": {"max_steps": 3}, "logging": {"save_every": 1}}
    path, run = write(tmp_path, doc), tmp_path / "run"
    real_run, real_step, real_resume = pipeline._run_stage, GRPOTrainer.train_step, GRPOTrainer._resume
    calls: list[str] = []
    resumed_at: list[int] = []

    def counting(cfg, i, *args, **kw):
        calls.append(cfg.stages[i].name)
        return real_run(cfg, i, *args, **kw)

    def killed_at_step_2(self):
        if self.step == 1 and len(calls) == 2:
            raise RuntimeError("killed")
        return real_step(self)

    def resume(self):
        real_resume(self)
        resumed_at.append(self.step)

    monkeypatch.setattr(pipeline, "_run_stage", counting)
    monkeypatch.setattr(GRPOTrainer, "train_step", killed_at_step_2)
    monkeypatch.setattr(GRPOTrainer, "_resume", resume)
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(path, output_dir=str(run), progress=False)
    partial = json.loads((run / "pipeline_summary.json").read_text())
    assert [s["name"] for s in partial["stages"]] == ["cold"] and not partial["complete"]
    done_before = (run / "01_cold" / "stage.json").stat().st_mtime_ns

    with pytest.raises(ConfigError, match="--resume"):  # no silent overwrite of a run
        run_pipeline(path, output_dir=str(run), progress=False)
    summary = run_pipeline(path, output_dir=str(run), resume=True, progress=False)

    assert resumed_at == [1]  # the GRPO stage went on from its checkpoint, not from scratch
    steps = [json.loads(line)["step"] for line in (run / "02_rl" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert calls == ["cold", "rl", "rl", "rs", "sft_base"]  # the finished stage was not run again
    assert (run / "01_cold" / "stage.json").stat().st_mtime_ns == done_before
    assert summary["complete"] and [s["kind"] for s in summary["stages"]] == ["sft", "grpo", "sample", "sft"]
    assert summary == json.loads((run / "pipeline_summary.json").read_text())
    for s in summary["stages"]:
        if s["kind"] == "sample":
            assert s["kept"] == s["total"] == 8  # 4 prompts x k=2, nothing filtered
        else:
            assert 0 <= s["accuracy"] <= 1 and 0 <= s["format_rate"] <= 1 and s["params"] > 0
            assert (run / s["dir"] / "model" / "config.json").is_file()  # standalone: LoRA merged
    assert json.loads((run / "04_sft_base" / "summary.json").read_text())["rows"] == 8  # the sample stage's rows
    assert summary["stages"][3]["samples_from"] == "rl"


# ------------------------------------------------------------------------------------------------ acceptance
@pytest.mark.slow
def test_the_tiny_r1_pipeline_shows_why_each_stage_exists(tmp_path):
    """Issue 14's acceptance, from an empty cache (the base and the student are pre-trained here), as a user runs
    it. The README's table is this run's."""
    run = tmp_path / "run"
    env = {**__import__("os").environ, "R1KIT_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "rl.cli", "pipeline", "recipes/r1_tiny_pipeline.yaml", "--output-dir", str(run)]
    subprocess.run([*cmd, "--no-progress"], check=True, cwd=REPO, env=env)
    s = json.loads((run / "pipeline_summary.json").read_text())
    by = {e["name"]: e for e in s["stages"]}
    base, cold, rl1, rs = s["base"], by["cold_start"], by["reasoning_rl"], by["rejection_sampling"]
    sft, rl2, student = by["sft_on_samples"], by["final_rl"], by["distill_student"]
    assert base["format_rate"] <= 0.2 and cold["format_rate"] >= 0.9
    assert rl1["accuracy"] >= cold["accuracy"] + 0.2
    assert rs["kept"] > 0 and rs["total"] == 4 * 1024
    assert sft["accuracy"] >= 0.9 * rl1["accuracy"]
    assert rl2["accuracy"] >= rl1["accuracy"]
    assert student["params"] < rl1["params"] and student["accuracy"] >= 0.8 * rl1["accuracy"]
    assert s["complete"] and s["wall_seconds"] <= 20 * 60


# ------------------------------------------------------------------------------------------ the real pipeline
def s1k_rows(n: int) -> list[dict]:
    """Rows in simplescaling/s1K-1.1's schema (the columns the cold-start stage reads, and a few it does not)."""
    return [
        {
            "question": f"What is {i} + 2?",
            "solution": str(i + 2),
            "deepseek_thinking_trajectory": f"{i} plus 2 is {i + 2}.",
            "deepseek_attempt": f"\\boxed{{{i + 2}}}",
            "cot_type": "math",
        }
        for i in range(n)
    ]


def numina_rows(n: int) -> list[dict]:
    """Rows in AI-MO/NuminaMath-1.5's schema that pass the recipe's filter."""
    keep = {"question_type": "math-word-problem", "problem_is_valid": "Yes", "solution_is_valid": "Yes"}
    return [
        {"problem": f"Solve $x - {i} = 1$.", "solution": f"$x = {i + 1}$", "answer": str(i + 1), **keep}
        for i in range(n)
    ]


def test_the_real_pipeline_runs_one_step_of_each_stage_with_tiny_stand_ins(tmp_path, tiny_random_model_dir):
    """recipes/r1_qwen3_moe_pipeline.yaml as written (hub datasets' columns, templates, rewards, bf16, LoRA,
    gradient checkpointing), with the hub's model, student and datasets swapped for tiny local stand-ins and every
    size shrunk to one step."""
    doc = yaml.safe_load(REPO.joinpath("recipes", "r1_qwen3_moe_pipeline.yaml").read_text())
    numina, s1k = tmp_path / "numina.jsonl", tmp_path / "s1k.jsonl"
    numina.write_text("".join(json.dumps(r) + "\n" for r in numina_rows(30)))
    s1k.write_text("".join(json.dumps(r) + "\n" for r in s1k_rows(8)))
    sh = doc["shared"]
    sh["model"]["name_or_path"] = tiny_random_model_dir("qwen3_moe")
    sh["data"].update(path=str(numina), num_train=8, num_eval=2)
    sh["rollout"].update(max_new_tokens=8, generation_batch_size=None)
    sh["algorithm"].update(num_generations=2, batch_size=4)
    sh["training"].update(max_steps=1, micro_batch_size=2, logprob_micro_batch_size=2, torch_threads=2)
    sh["logging"].update(progress=False, plots=False)
    doc["eval"] = {"k": 2, "limit": 2}
    for st in doc["stages"]:
        r = st.setdefault("recipe", {})
        r.setdefault("training", {})["max_steps"] = 1
        if "sft" in r:
            r["sft"].update(batch_size=2, epochs=None, max_length=1024)  # the R1 prompt: ~400 characters
        if st["kind"] == "sample":  # a random model is never right: keep what it writes, so the SFTs have rows
            r["sample"].update(k=2, limit=2, require_correct=False, require_format=False, language_reward=None)
            r.setdefault("rollout", {})["max_new_tokens"] = 8
            r["sample"]["drop_truncated"] = False
        if "model" in r:
            r["model"]["name_or_path"] = tiny_random_model_dir("qwen3")
    doc["stages"][0]["recipe"]["sft"]["dataset"] = str(s1k)
    summary = run_pipeline(write(tmp_path, doc), output_dir=str(tmp_path / "run"), progress=False)
    assert [s["name"] for s in summary["stages"]] == [s["name"] for s in doc["stages"]]
    cold = json.loads((tmp_path / "run" / "01_cold_start" / "summary.json").read_text())
    assert cold["rows"] == 8 and cold["steps"] == 1
    first = (tmp_path / "run" / "01_cold_start" / "config.yaml").read_text()
    assert "bfloat16" in first and "completion_template" in first
