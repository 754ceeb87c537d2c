"""``r1kit --version``, ``config``, ``rewards``, ``generate`` and ``export``, run as a user runs them
(``python -m rl.cli`` in a subprocess), each checked against the same result computed here without the command."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewards import BUILTIN_REWARDS
from rewards.base import REWARDS
from rl.config import RecipeConfig, dump_recipe, load_recipe
from rl.tools_cli import package_version
from rl.trainer import GRPOTrainer

ROOT = Path(__file__).parents[1]
REWARD = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"
QUESTION = "12+7"
QA_PROMPT = "Q: 12+7\nA:"  # the qa template, written out by hand
RUN_MAX_NEW_TOKENS = 8


def r1kit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rl.cli", *args], capture_output=True, encoding="utf-8", env=env, cwd=cwd, timeout=600
    )


def assert_user_error(proc: subprocess.CompletedProcess, *names: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "r1kit: config error:" in proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_random_model_dir) -> dict[str, Path]:
    """A 1-step LoRA run and a 1-step full run of a tiny random DeepSeek-V3 (own base copy, so a test may hide it)."""
    root = tmp_path_factory.mktemp("tools-cli")
    base = root / "base"
    shutil.copytree(tiny_random_model_dir("deepseek_v3"), base)
    out = {"base": base}
    for finetune in ("lora", "full"):
        cfg = load_recipe(
            None,
            [
                f"model.name_or_path={base}",
                f"model.finetune={finetune}",
                "data.task=arith",
                "data.num_train=16",
                "data.num_eval=2",
                f"rollout.max_new_tokens={RUN_MAX_NEW_TOKENS}",
                "algorithm.num_generations=2",
                "algorithm.batch_size=4",
                f"rewards.rules=[{{name: '{REWARD}'}}]",
                "training.max_steps=1",
                "training.lr=0.01",
                "training.torch_threads=2",
                "logging.progress=false",
                "logging.plots=false",
            ],
        )
        GRPOTrainer(cfg, root / finetune).train()
        out[finetune] = root / finetune
    return out


def final_model(run: Path, base: Path):
    """The run's final model loaded the way peft / transformers users load it, without r1kit."""
    final = run / "final"
    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final).eval()
    return AutoModelForCausalLM.from_pretrained(final).eval()


def greedy_text(model, tokenizer, text: str, max_new_tokens: int) -> str:
    """transformers' own greedy decode, cut before the first EOS."""
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    gen = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in gen:
        gen = gen[: gen.index(tokenizer.eos_token_id)]
    return tokenizer.decode(gen, skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------------- version


def test_version_prints_the_installed_version():
    proc = r1kit("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"r1kit {importlib.metadata.version('r1kit')}\n"


def test_version_falls_back_to_pyproject(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert package_version() == expected


# ----------------------------------------------------------------------------------------------------- config


def test_config_prints_the_resolved_recipe_and_round_trips(tmp_path):
    recipe, overrides = ROOT / "recipes" / "r1_zero_tiny.yaml", ["training.lr=0.001", "algorithm.beta=0.02"]
    proc = r1kit("config", str(recipe), *[a for o in overrides for a in ("--set", o)])
    assert proc.returncode == 0, proc.stderr
    cfg = load_recipe(recipe, overrides)
    assert proc.stdout == dump_recipe(cfg)
    parsed = yaml.safe_load(proc.stdout)
    assert list(parsed) == [
        "model",
        "data",
        "rollout",
        "algorithm",
        "rewards",
        "training",
        "logging",
        "moe",
        "sft",
        "sample",
    ]
    assert parsed["training"]["lr"] == 0.001 and parsed["algorithm"]["beta"] == 0.02
    assert parsed["moe"] == RecipeConfig().to_dict()["moe"]  # a section the recipe does not mention: all defaults
    (tmp_path / "resolved.yaml").write_text(proc.stdout)
    assert load_recipe(tmp_path / "resolved.yaml") == cfg


def test_config_without_a_recipe_prints_every_default():
    proc = r1kit("config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == dump_recipe(RecipeConfig())


def test_config_of_a_run_is_the_text_the_run_wrote(runs):
    proc = r1kit("config", str(runs["lora"] / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (runs["lora"] / "config.yaml").read_text()


def test_config_typo_fails_fast_without_torch(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("rollout:\n  max_new_token: 8\n")
    child = textwrap.dedent(f"""
        import json, sys, time
        from rl.cli import main
        rc = main(["config", {str(recipe)!r}])
        print(json.dumps({{"rc": rc, "torch": "torch" in sys.modules, "cpu_s": time.process_time()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 2
    assert "did you mean 'rollout.max_new_tokens'" in proc.stderr
    assert not result["torch"], "r1kit config imported torch"
    assert result["cpu_s"] < 1.0, f"{result['cpu_s']:.2f} s of CPU (interpreter start included)"


def test_config_bad_recipe_path_names_it():
    assert_user_error(r1kit("config", "recipes/no_such_recipe.yaml"), "no_such_recipe.yaml", "does not exist")


# ---------------------------------------------------------------------------------------------------- rewards


def test_rewards_json_lists_every_registered_reward_with_its_columns():
    proc = r1kit("rewards", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    # every built-in (this process's registry may also hold test-only rewards; the command's process does not)
    assert sorted(rows) == sorted(BUILTIN_REWARDS) and set(rows) <= set(REWARDS.names())
    assert rows["math_accuracy"]["columns"] == ["answer"]
    assert "answer" in rows["math_accuracy"]["doc"]  # from its module: the function itself has no docstring
    assert rows["code_accuracy"]["columns"] == ["tests"]
    assert rows["r1_format_strict"] == {
        "name": "r1_format_strict",
        "columns": [],
        "doc": "1.0 when the whole completion is one think block then one answer block, else 0.0.",
    }


def test_rewards_table_is_never_cut_when_piped():
    proc = r1kit("rewards")
    assert proc.returncode == 0, proc.stderr
    docs = {r["name"]: r["doc"] for r in json.loads(r1kit("rewards", "--json").stdout)}
    longest = max(docs, key=lambda n: len(docs[n]))
    assert len(docs[longest]) > 120  # longer than a terminal line: the check below means something
    line = next(ln for ln in proc.stdout.splitlines() if f" {longest} " in ln)
    assert docs[longest] in line and "math_accuracy" in proc.stdout


def test_rewards_load_lists_a_users_file(tmp_path):
    user = tmp_path / "my_rules.py"
    user.write_text(
        textwrap.dedent('''
        from rewards.base import register_reward

        @register_reward("_cli_listed_reward")
        def listed(prompts, completions, gold, **kwargs):
            """Registered by the file.

            Second paragraph, not shown."""
            return [0.0 for _ in completions]

        def plain(prompts, completions, solution, **kwargs):
            """Referenced by path in a recipe."""
            return [0.0 for _ in completions]

        def format_reward(completions, **kwargs):
            """open-r1's signature: no prompts."""
            return [0.0 for _ in completions]

        def helper(x):
            return x
    ''')
    )
    proc = r1kit("rewards", "--json", "--load", str(user))
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["_cli_listed_reward"] == {
        "name": "_cli_listed_reward",
        "doc": "Registered by the file.",
        "columns": ["gold"],
    }
    assert rows[f"{user}:plain"]["columns"] == ["solution"]
    assert rows[f"{user}:format_reward"]["columns"] == []
    assert not any(name.endswith(":helper") or name.endswith(":listed") for name in rows)


def test_rewards_load_missing_file_names_the_option(tmp_path):
    assert_user_error(r1kit("rewards", "--load", str(tmp_path / "missing.py")), "--load", "missing.py")


# --------------------------------------------------------------------------------------------------- generate


def test_generate_on_a_lora_run_is_transformers_greedy_decode_of_the_templated_prompt(runs):
    proc = r1kit("generate", str(runs["lora"]), QUESTION)
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(runs["lora"] / "final")
    expected = greedy_text(final_model(runs["lora"], runs["base"]), tok, QA_PROMPT, RUN_MAX_NEW_TOKENS)
    assert proc.stdout == expected + "\n"
    assert repr(QA_PROMPT) in proc.stderr  # the formatted prompt is shown


def test_generate_on_a_plain_model_dir_with_raw_prompt(runs):
    proc = r1kit("generate", str(runs["base"]), "7+7=", "--raw", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(runs["base"])
    expected = greedy_text(AutoModelForCausalLM.from_pretrained(runs["base"]).eval(), tok, "7+7=", 5)
    assert proc.stdout == expected + "\n"


def test_generate_samples_k_completions(runs):
    proc = r1kit("generate", str(runs["full"]), QUESTION, "-n", "3", "--temperature", "1.0", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    headers = [ln for ln in proc.stdout.splitlines() if ln.startswith("--- completion ")]
    assert [h.split(" (")[0] for h in headers] == [f"--- completion {i}/3" for i in (1, 2, 3)]


def test_generate_on_a_run_without_final_uses_its_latest_checkpoint(runs, tmp_path):
    run = tmp_path / "unfinished"
    shutil.copytree(runs["lora"], run, ignore=shutil.ignore_patterns("final"))
    proc = r1kit("generate", str(run), QUESTION)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoints/step-000001" in proc.stderr
    # One step trained: the checkpoint holds the final weights.
    tok = AutoTokenizer.from_pretrained(runs["lora"] / "final")
    final = final_model(runs["lora"], runs["base"])
    assert proc.stdout == greedy_text(final, tok, QA_PROMPT, RUN_MAX_NEW_TOKENS) + "\n"
    # Text can hide unloaded adapters (a 1-step change may not flip a greedy token): compare logits of an export.
    proc = r1kit("export", str(run), str(tmp_path / "out"), "--merge")
    assert proc.returncode == 0, proc.stderr
    ids = torch.tensor([tok.encode(QA_PROMPT)])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "out")(ids).logits
        assert torch.allclose(got, final(ids).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(got, AutoModelForCausalLM.from_pretrained(runs["base"])(ids).logits, atol=1e-3)


def test_generate_missing_path_names_the_argument(tmp_path):
    assert_user_error(r1kit("generate", str(tmp_path / "no_such_run"), "1+1"), "MODEL_OR_RUN", "does not exist")


def test_generate_run_without_weights_says_so(runs, tmp_path):
    run = tmp_path / "empty-run"
    run.mkdir()
    shutil.copy(runs["lora"] / "config.yaml", run / "config.yaml")
    assert_user_error(r1kit("generate", str(run), "1+1"), "no final weights yet")


# ----------------------------------------------------------------------------------------------------- export

LOAD_ELSEWHERE = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor([AutoTokenizer.from_pretrained(sys.argv[1]).encode(sys.argv[3])])
with torch.no_grad():
    torch.save(model(ids).logits, sys.argv[2])
print(sorted(m for m in ("peft", "rl", "rewards", "rollouts") if m in sys.modules))
"""


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_export_merge_loads_with_plain_transformers_and_gives_the_runs_logits(runs, tmp_path, finetune):
    out = tmp_path / "exported"
    proc = r1kit("export", str(runs[finetune]), "--merge", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    tok = AutoTokenizer.from_pretrained(runs[finetune] / "final")
    ids = torch.tensor([tok.encode(QA_PROMPT)])
    with torch.no_grad():
        expected = final_model(runs[finetune], runs["base"])(ids).logits
        base = AutoModelForCausalLM.from_pretrained(runs["base"]).eval()(ids).logits
    assert (expected - base).abs().max() > 1e-3, "the step must have moved the weights for this check to bite"
    # Elsewhere: another directory, no r1kit cache, no PYTHONPATH, and the run's base model out of sight.
    hidden = runs["base"].with_name("base-hidden")
    runs["base"].rename(hidden)
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"R1KIT_CACHE": str(tmp_path / "none")}
        argv = [sys.executable, "-c", LOAD_ELSEWHERE, str(out), str(tmp_path / "logits.pt"), QA_PROMPT]
        child = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    finally:
        hidden.rename(runs["base"])
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip().splitlines()[-1] == "[]", "loading the export imported peft or r1kit"
    got = torch.load(tmp_path / "logits.pt")
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_export_lora_without_merge_explains(runs, tmp_path):
    proc = r1kit("export", str(runs["lora"]), str(tmp_path / "out"))
    assert_user_error(proc, "--merge", "base_model_name_or_path", str(runs["base"]))
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_out_unless_overwrite(runs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(r1kit("export", str(runs["full"]), str(out)), "OUT", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    proc = r1kit("export", str(runs["full"]), str(out), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    )


def test_export_refuses_to_write_into_the_run_and_non_runs(runs, tmp_path):
    assert_user_error(r1kit("export", str(runs["full"]), str(runs["full"] / "final"), "--overwrite"), "OUT")
    assert (runs["full"] / "final" / "model.safetensors").is_file()
    assert_user_error(r1kit("export", str(tmp_path), str(tmp_path / "out")), "RUN", "not an r1kit run directory")
