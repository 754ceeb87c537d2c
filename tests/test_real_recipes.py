"""Every recipe runs one step with stand-ins for what the hub would provide: the recipe's own values, resolved,
with ``model.name_or_path`` swapped for a tiny random model of the same family and ``data.path`` for a few rows
built here in the real dataset's schema. Config keys, adapters, templates, rewards and the GPU-path options
(bf16, gradient checkpointing, LoRA on experts, KL) thus all run; only the sizes are shrunk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rl.config import load_recipe
from rl.trainer import GRPOTrainer
from rollouts.tasks import R1_SYSTEM_PROMPT


def gsm8k_rows(n: int) -> list[dict]:
    return [
        {
            "question": f"Tom has {i} apples and buys 3 more. How many apples does he have?",
            "answer": f"Tom has {i} + 3 = <<{i}+3={i + 3}>>{i + 3} apples.\n#### {i + 3}",
        }
        for i in range(n)
    ]


def math_rows(n: int) -> list[dict]:
    # levels 1-5 in turn: the recipes keep levels 3-5
    return [
        {
            "problem": f"What is $\\frac{{{2 * i}}}{{2}}$?",
            "level": f"Level {i % 5 + 1}",
            "type": "Prealgebra",
            "solution": f"$\\frac{{{2 * i}}}{{2}} = \\boxed{{{i}}}$.",
        }
        for i in range(n)
    ]


def numina_rows(n: int) -> list[dict]:
    rows = [
        {
            "problem": f"Find $x$ if $x - {i} = 0$.",
            "solution": f"So $x = \\boxed{{{i}}}$.",
            "answer": str(i),
            "problem_type": "Algebra",
            "question_type": "math-word-problem",
            "problem_is_valid": "Yes",
            "solution_is_valid": "Yes",
            "source": "olympiads",
            "synthetic": False,
        }
        for i in range(n)
    ]
    rows[0] = {**rows[0], "question_type": "proof", "answer": "proof"}  # filtered out
    return rows


# recipe -> (tiny family standing in for its model, rows in its dataset's schema or None for a synthetic task)
STAND_INS = {
    "r1_zero_tiny.yaml": ("deepseek_v3", None),
    "code_tiny.yaml": ("deepseek_v3", None),  # synthetic pyfunc task, sandboxed code_accuracy reward
    "r1_zero_gsm8k_qwen_moe.yaml": ("qwen2_moe", gsm8k_rows),  # Qwen1.5-MoE: the qwen2_moe architecture
    "r1_zero_gsm8k_olmoe.yaml": ("olmoe", gsm8k_rows),
    "r1_zero_math_qwen_moe.yaml": ("qwen3_moe", math_rows),
    "r1_zero_math_moonlight_dr_grpo.yaml": ("deepseek_v3", math_rows),  # Moonlight: the DeepSeek-V3 architecture
    "r1_zero_numina_qwen3_moe_gspo.yaml": ("qwen3_moe", numina_rows),
}
# Pipeline files (r1kit pipeline: *_pipeline.yaml) are tested in tests/test_pipeline.py.
RECIPES = sorted(
    p for p in Path(__file__).parents[1].joinpath("recipes").glob("*.yaml") if not p.stem.endswith("_pipeline")
)


def shrunk(recipe: Path, model_dir: str, data_path: Path | None) -> list[str]:
    """Overrides that keep the recipe's choices but make one step cheap on a CPU."""
    cfg = load_recipe(recipe)
    G = min(cfg.algorithm.num_generations, 4)  # the R1 template is ~400 characters: ~400 tokens per row here
    out = [
        f"model.name_or_path={model_dir}",
        "data.num_train=8",
        "data.num_eval=2",
        "rollout.max_new_tokens=16",
        f"algorithm.num_generations={G}",
        f"algorithm.batch_size={2 * G}",  # two groups
        f"algorithm.mini_batch_size={G if cfg.algorithm.mini_batch_size else 'null'}",  # keep several updates
        "training.max_steps=1",
        "training.torch_threads=2",
        "logging.progress=false",
    ]
    if cfg.training.micro_batch_size and G % cfg.training.micro_batch_size:
        out.append(f"training.micro_batch_size={G}")
    if data_path is not None:
        out.append(f"data.path={data_path}")
    return out


def test_every_recipe_has_a_stand_in():
    missing = sorted({p.name for p in RECIPES} - set(STAND_INS))
    assert not missing, f"add the recipes {missing} to STAND_INS in {Path(__file__).name} (tiny family + rows)"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_runs_one_step_with_tiny_stand_ins(recipe, tiny_random_model_dir, tmp_path):
    family, make_rows = STAND_INS[recipe.name]
    data_path = None
    if make_rows is not None:
        data_path = tmp_path / f"{recipe.stem}.jsonl"
        data_path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(30)))
    cfg = load_recipe(recipe, shrunk(recipe, tiny_random_model_dir(family), data_path))
    trainer = GRPOTrainer(cfg, tmp_path / "run")

    sample = trainer.data.train[0]
    if cfg.data.template == "r1":
        assert sample.text.startswith(R1_SYSTEM_PROMPT) and sample.text.endswith(". Assistant:")
    if cfg.data.path:  # the adapter produced the column math_accuracy reads, and the recipe's filter held
        assert sample.columns["answer"].strip()
        for col, allowed in cfg.data.filter.items():
            assert all(p.columns[col] in allowed for p in trainer.data.train + trainer.data.eval)
    assert trainer.policy.model.dtype == {"bfloat16": torch.bfloat16}.get(cfg.model.dtype, torch.float32)

    summary = trainer.train()
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert summary["steps"] == 1 and summary["world_size"] == 1
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
    if cfg.algorithm.beta > 0:
        assert math.isfinite(metrics["kl"])
    assert (tmp_path / "run" / "final").is_dir()
