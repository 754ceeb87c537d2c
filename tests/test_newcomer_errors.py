"""What a newcomer meets after the recipe is read: every mistake is a message that names the recipe key and the fix,
exit code 2 and no traceback on the console (the traceback goes to RUN/r1kit.log); custom data paths resolve as
people expect; run files are readable by others; a resume before the first checkpoint leaves one row per step."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import yaml

from core.configio import ConfigError
from rl.cli import main
from rl.config import dump_recipe, load_recipe

TESTS = Path(__file__).parent
RECIPE = TESTS.parent / "recipes" / "r1_zero_tiny.yaml"


@pytest.fixture(autouse=True)
def _no_file_handlers_left():
    """``r1kit train`` adds a file handler for RUN/r1kit.log to the root logger; in-process runs must remove it."""
    before = list(logging.getLogger().handlers)
    yield
    for h in logging.getLogger().handlers:
        if h not in before:
            logging.getLogger().removeHandler(h)
            h.close()


def _train(tmp_path: Path, capsys, *sets: str, recipe: str | None = None, extra: tuple[str, ...] = ()) -> str:
    """Run ``r1kit train`` in-process; assert exit 2 and no traceback on the console; return stderr."""
    argv = ["train", recipe or str(RECIPE), "--output-dir", str(tmp_path / "run"), *extra]
    for s in ("logging.progress=false", "logging.plots=false", *sets):
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "r1kit: config error:" in err and "Traceback" not in err
    return err


def _tiny_random(model_dir: str) -> tuple[str, ...]:
    """Overrides for a fast run on a random tiny model (no pre-training), evaluated on 4 prompts."""
    return (
        f"model.name_or_path={model_dir}",
        "data.num_eval=4",
        "data.num_train=16",
        "rollout.max_new_tokens=6",
        "algorithm.num_generations=2",
        "algorithm.batch_size=4",
        "training.max_steps=1",
    )


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------ error classes
def test_unknown_reward_name_says_did_you_mean(tmp_path, capsys):
    err = _train(tmp_path, capsys, "rewards.rules=[{name: math_acuracy}]")
    assert "rewards.rules[0].name" in err and "math_accuracy" in err


def test_dataset_missing_a_reward_column(tmp_path, capsys):
    data = _jsonl(tmp_path / "rows.jsonl", [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(40)])
    err = _train(
        tmp_path,
        capsys,
        f"data.path={data}",
        "data.num_eval=4",
        f"rewards.rules=[{{name: '{TESTS / 'rewards_for_tests.py'}:needs_missing_column'}}]",
    )
    assert "solution_text" in err and "rewards.rules" in err and "columns" in err


def test_missing_data_file(tmp_path, capsys):
    err = _train(tmp_path, capsys, f"data.path={tmp_path / 'nope.jsonl'}")
    assert "data.path" in err and "does not exist" in err
    log = (tmp_path / "run" / "r1kit.log").read_text()
    assert "Traceback" in log and "DataError" in log, "the traceback goes to the run's log"


def test_typo_in_a_relative_data_path_is_not_a_hub_lookup(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "mydata.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    err = _train(tmp_path, capsys, "data.path=data/mydata.jsonl")
    assert "data.path: 'data/mydata.jsonl' does not exist" in err and "Hub" not in err


def test_a_hub_id_that_cannot_be_loaded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here either way; offline fails at once
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    err = _train(tmp_path, capsys, "data.path=nobody-has-this/dataset-xyz")
    assert "data.path: 'nobody-has-this/dataset-xyz' is not a local file or directory" in err and "hub id" in err


def test_empty_jsonl(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    err = _train(tmp_path, capsys, f"data.path={tmp_path / 'empty.jsonl'}")
    assert "data.path" in err and "is empty" in err


def test_nonexistent_model_path(tmp_path, capsys):
    err = _train(tmp_path, capsys, f"model.name_or_path={tmp_path / 'no-such-model'}")
    assert "model.name_or_path" in err and "is not a model directory" in err


def test_a_directory_without_a_model(tmp_path, capsys):
    (tmp_path / "empty-model").mkdir()
    err = _train(tmp_path, capsys, f"model.name_or_path={tmp_path / 'empty-model'}")
    assert "model.name_or_path" in err and "no config.json" in err


def test_bad_tiny_ref(tmp_path, capsys):
    err = _train(tmp_path, capsys, "model.name_or_path=tiny://gpt9/arith")
    assert "model.name_or_path" in err and "gpt9" in err and "deepseek_v3" in err
    err = _train(tmp_path, capsys, "model.name_or_path=tiny://deepseek_v3")  # no task
    assert err.count("model.name_or_path") == 1 and "tiny://<family>/<task>" in err


def test_reward_returning_none(tmp_path, capsys, tiny_random_model_dir):
    model = tiny_random_model_dir("qwen3_moe")
    err = _train(
        tmp_path,
        capsys,
        *_tiny_random(model),
        f"rewards.rules=[{{name: '{TESTS / 'rewards_for_errors.py'}:returns_none'}}]",
    )
    assert "returned None" in err and "list" in err and "raised TypeError" not in err


def test_too_many_failing_samples_names_the_real_key(tmp_path, capsys, tiny_random_model_dir):
    model = tiny_random_model_dir("qwen3_moe")
    err = _train(
        tmp_path,
        capsys,
        *_tiny_random(model),
        "rewards.max_error_fraction=0.0",
        f"rewards.rules=[{{name: '{TESTS / 'rewards_for_errors.py'}:always_raises'}}]",
    )
    assert "rewards.max_error_fraction" in err and "rewards_max_error_fraction" not in err


def test_missing_tracker_package_fails_before_the_model_loads(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logging\.trackers: 'wandb' needs the wandb package.*pip install"):
        load_recipe(RECIPE, ["logging.trackers=[wandb]"])


def test_resume_with_a_changed_recipe_names_the_keys(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_recipe(load_recipe(RECIPE)))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    err = _train(tmp_path, capsys, "algorithm.batch_size=32", "training.max_steps=80", extra=("--resume",))
    assert "algorithm.batch_size: 64 -> 32" in err and "--force" in err
    assert "training.max_steps" not in err, "extending a run is what --resume is for"


# --------------------------------------------------------------------------------------------- custom data paths
def test_data_path_on_the_command_line_replaces_the_recipes_task():
    cfg = load_recipe(RECIPE, ["data.path=rows.jsonl"])
    assert cfg.data.path == "rows.jsonl" and cfg.data.task is None


def test_a_recipe_setting_both_task_and_path_says_which_to_unset(tmp_path):
    (tmp_path / "r.yaml").write_text("data: {task: arith, path: rows.jsonl}\n")
    with pytest.raises(ConfigError, match=r"data\.task: null"):
        load_recipe(tmp_path / "r.yaml")


def test_relative_paths_resolve_beside_the_recipe_first(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    folder.mkdir()
    _jsonl(folder / "rows.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    (folder / "my_rules.py").write_text("def r(prompts, completions, **kw):\n    return [1.0 for _ in completions]\n")
    (folder / "recipe.yaml").write_text(
        "data: {path: rows.jsonl}\nrewards: {rules: [{name: 'my_rules.py:r'}, {name: math_accuracy}]}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    cfg = load_recipe("exp/recipe.yaml")
    assert cfg.data.path == str(folder / "rows.jsonl") and cfg.data.task is None
    assert [r.name for r in cfg.rewards.rules] == [f"{folder / 'my_rules.py'}:r", "math_accuracy"]
    cwd_only = load_recipe("exp/recipe.yaml", ["data.path=elsewhere.jsonl"])  # not beside the recipe: left as is
    assert cwd_only.data.path == "elsewhere.jsonl"


def test_a_small_file_dataset_gets_the_num_eval_to_use(tmp_path):
    from rollouts.data import DataError, load_prompt_sets

    data = _jsonl(tmp_path / "rows.jsonl", [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(10)])
    with pytest.raises(DataError, match=r"has 10 usable rows; pass --set data\.num_eval=2"):
        load_prompt_sets(
            task=None,
            path=str(data),
            split="train",
            prompt_column="prompt",
            template="qa",
            num_train=100,
            num_eval=256,
            seed=0,
        )


def test_file_dataset_num_eval_and_seed_do_not_rebuild_the_tiny_base(monkeypatch):
    import rl.modeling

    keys = []
    monkeypatch.setattr(rl.modeling, "ensure_tiny_base", lambda ref, **kw: keys.append((ref, kw)) or "/x")
    for sets in (["data.num_eval=8", "data.seed=1"], ["data.num_eval=16", "data.seed=2"]):
        cfg = load_recipe(RECIPE, ["data.path=rows.jsonl", *sets])
        rl.modeling.resolve_source(cfg.model, cfg.data)
    assert keys[0] == keys[1] and keys[0][1]["n_eval"] == 256, "a file's held-out set is not the tiny task's"
    cfg = load_recipe(RECIPE, ["data.num_eval=8"])  # the synthetic task itself: its held-out prompts are kept out
    rl.modeling.resolve_source(cfg.model, cfg.data)
    assert keys[2][1]["n_eval"] == 8


# ------------------------------------------------------------------------------------------ run files, resume
def test_run_files_are_readable_by_others_under_umask_022(tmp_path, fake_run_dir, fake_step):
    from core.files import atomic_write_text
    from rl.reporting.plots import write_plots
    from rollouts.store import RolloutStore

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        RolloutStore(tmp_path).write(1, *fake_step(1))
        write_plots(fake_run_dir)
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.yaml", "a: 1\n")
    finally:
        os.umask(old)
    files = [tmp_path / "config.yaml", *tmp_path.glob("rollouts/*.parquet"), *fake_run_dir.glob("plots/*.png")]
    assert len(files) >= 3
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert stat.S_IMODE((tmp_path / "private.yaml").stat().st_mode) == 0o600, "the umask is honoured, not overridden"


def test_resume_before_the_first_checkpoint_leaves_one_row_per_step(tmp_path, tiny_random_model_dir):
    from rl.trainer import GRPOTrainer

    cfg = load_recipe(
        None,
        [
            *_tiny_random(tiny_random_model_dir("qwen3_moe")),
            "training.max_steps=2",
            "logging.save_every=0",
            "logging.progress=false",
            "logging.plots=false",
            f"rewards.rules=[{{name: '{TESTS / 'rewards_for_tests.py'}:digit_share'}}]",
        ],
    )
    run = tmp_path / "run"
    run.mkdir()
    # what a run killed during step 3, before its first checkpoint, leaves behind
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.0}) + "\n" for s in (1, 2)))
    GRPOTrainer(cfg, run, resume=True).train()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["max_steps"] == 2
