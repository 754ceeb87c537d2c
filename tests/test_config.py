"""Recipe errors fail before any work, naming the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.configio import ConfigError
from rl.config import RecipeConfig, dump_recipe, load_recipe

# Pipeline files (r1kit pipeline: *_pipeline.yaml) are tested in tests/test_pipeline.py.
RECIPES = sorted(
    p for p in Path(__file__).parents[1].joinpath("recipes").glob("*.yaml") if not p.stem.endswith("_pipeline")
)


@pytest.mark.parametrize(
    "override, message",
    [
        ("algorithm.num_generations=1", r"algorithm\.num_generations: must be >= 2"),
        ("algorithm.batch_size=30", r"algorithm\.batch_size: 30 is not a positive multiple .* use e\.g\. 24"),
        ("algorithm.mini_batch_size=48", r"algorithm\.mini_batch_size: 48 must divide algorithm\.batch_size=64"),
        ("training.lr=-0.001", r"training\.lr: must be a positive number"),
        ("training.max_steps=ten", r"training\.max_steps: expected an integer, got str"),
        (
            "algorithm.num_generatons=4",
            r"unknown key 'algorithm\.num_generatons'; did you mean 'algorithm\.num_generations'",
        ),
        ("algorithm.loss=ppo", r"algorithm\.loss: unknown 'ppo'; known: \[.*'grpo'"),
        ("algorithm.std_scale=row", r"algorithm\.std_scale: unknown 'row'; known: \['batch', 'group', 'none'\]"),
        ("algorithm.advantage=rloo", r"algorithm\.std_scale: the 'rloo' advantage takes \['none'\], got 'group'"),
        ("rollout.sampler=vllm", r"rollout\.sampler: unknown 'vllm'; known: \['generate', 'r1kit'\]"),
        ("rollout.backend=sglang", r"rollout\.backend: unknown 'sglang'; known: \['transformers', 'vllm'\]"),
        ("training.lr_schedule=step", r"training\.lr_schedule: unknown 'step'; known: \['constant', 'cosine', 'lin"),
        ("model.finetune=qlora", r"model\.finetune: 'qlora' is not one of \['lora', 'full'\]"),
        ("rewards.rules=[{name: math_accuracy, wieght: 2}]", r"did you mean 'rewards\.rules\[0\]\.weight'"),
        ("training.micro_batch_size=5", r"training\.micro_batch_size: 5 must divide the mini-batch \(64"),
        ("colour=blue", r"unknown key 'colour'"),
        ("algorithm=3", r"algorithm: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, [override])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_recipe(None, ["algorithm.num_generations"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_and_round_trip(tmp_path):
    cfg = load_recipe(None, ["algorithm.num_generations=16", "algorithm.batch_size=32", "training.lr=3e-5"])
    assert cfg.algorithm.num_generations == 16 and cfg.algorithm.prompts_per_step == 2
    assert cfg.training.lr == pytest.approx(3e-5)
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_recipe(cfg))
    assert load_recipe(path) == cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_resolves(recipe):
    assert isinstance(load_recipe(recipe), RecipeConfig)


def test_cli_reports_config_errors_with_exit_2(capsys):
    from rl.cli import main

    assert main(["train", str(RECIPES[0]), "--set", "algorithm.num_generations=1"]) == 2
    assert "algorithm.num_generations" in capsys.readouterr().err
