"""Rewards in general (issue 15, items 8, 14, 15, 16, 17): every built-in pickles and gives the same values in a
spawned worker; hostile bytes in model output are shown escaped; a sample whose weighted reward abstained or failed
gets no total and trains on nothing; lengths are tokens on every scoring path; the peers' format and length rewards
give the peers' numbers.

TRL's reference comes from the installed package; open-r1 is not installable, so its numbers are written out by hand
from the definitions in huggingface/open-r1 ``src/open_r1/rewards.py`` (each derivation is in the test).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import multiprocessing
import pickle
import re
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import rewards
from rewards import BUILTIN_REWARDS, REWARDS
from rewards.base import DetailedReward, Scored, score_detailed
from rewards.scoring import RewardColumn, RewardScorer, RewardScores, RewardSpec, bind_rewards, weighted_total
from rl.advantages import ADVANTAGES
from rl.cli import main
from rl.groups import mask_rows
from rl.losses import LOSSES
from rl.trainer import GRPOTrainer
from rollouts.records import Completion, Prompt, RolloutBatch
from rollouts.rescore import rescore
from rollouts.store import RolloutStore, load
from rollouts.view import printable, safe_frame

HERE = Path(__file__).resolve()
NOTEBOOKS = HERE.parents[1] / "notebooks"


# ---- rewards this file's scorers load by path ----------------------------------------------------------------


def crashing_accuracy(prompts, completions, **kwargs):
    """1.0 for "4", 0.0 otherwise; raises on "boom" (a grader bug, a sandbox failure)."""
    if any("boom" in c for c in completions):
        raise RuntimeError("grader crashed")
    return [float(c == "4") for c in completions]


def passing_format(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def abstain_always(prompts, completions, **kwargs):
    return [None] * len(completions)


def math_only(prompts, completions, kind, **kwargs):
    """A multi-task reward: None (does not apply) on the code prompts."""
    return [None if k == "code" else float(c == "4") for c, k in zip(completions, kind, strict=True)]


def record_ids(prompts, completions, completion_ids, record_to, **kwargs):
    """Appends the ``completion_ids`` it receives to the file ``record_to`` (the scorer loads this file as a module
    of its own, so a list here would not be the test's); scores each completion by its number of tokens."""
    with open(record_to, "a") as f:
        f.write(json.dumps(completion_ids) + "\n")
    return [float(len(ids)) for ids in completion_ids]


def _recorded(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _detailed_fn(prompts, completions, **kwargs):
    return [Scored(1.0, {"n": len(c)}) for c in completions]


# ---- 8. pickling ------------------------------------------------------------------------------------------------


def test_every_builtin_reward_pickles_to_the_registered_object():
    """``register_reward(detailed=True)`` rebinds the module attribute to the wrapper; pickle found that and not the
    function, and refused (math_accuracy, code_accuracy, code_all_pass, cosine_length). Now by module + name."""
    for name in BUILTIN_REWARDS:
        fn = REWARDS.get(name)
        assert pickle.loads(pickle.dumps(fn)) is fn, name
    assert pickle.loads(pickle.dumps(rewards.code_accuracy)).prepare is rewards.code_accuracy.prepare


def test_a_wrapper_that_is_no_module_attribute_pickles_its_function_and_attributes():
    wrapped = DetailedReward(_detailed_fn)  # this module's attribute is the function, not the wrapper
    wrapped.prepare = _detailed_fn
    back = pickle.loads(pickle.dumps(wrapped))
    assert isinstance(back, DetailedReward) and back is not wrapped
    assert back.fn is _detailed_fn and back.prepare is _detailed_fn and back.__name__ == "_detailed_fn"
    assert back.score(["q"], ["abc"]) == [Scored(1.0, {"n": 3})] and back(["q"], ["abc"]) == [1.0]


def _calls() -> dict[str, dict]:
    texts = ["<think>2+2=4</think><answer>\\boxed{4}</answer>", "Step 1: so 5. Step 2: \\boxed{5}", "4 4 4 4 4"]
    base = {"prompts": ["q"] * 3, "completions": texts, "completion_ids": [[1] * 5, [1] * 40, [1] * 9]}
    golds = {"answer": ["4"] * 3}
    return {
        name: {**base, **(golds if name in ("math_accuracy", "cosine_length", "len_reward") else {})}
        for name in BUILTIN_REWARDS
        if not name.startswith("code_")  # the code rewards' sandbox run is covered in their own tests
    }


def test_builtin_rewards_give_the_same_values_in_a_spawned_worker():
    """What TRL's async reward workers and a process pool do: ship the reward to a fresh interpreter and call it."""
    calls = _calls()
    local = {name: score_detailed(REWARDS.get(name), **kw) for name, kw in calls.items()}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        futures = {name: pool.submit(score_detailed, REWARDS.get(name), **kw) for name, kw in calls.items()}
        remote = {name: f.result(timeout=120) for name, f in futures.items()}
    assert remote == local
    assert local["overlong_penalty"][0].value == 0.0 and local["math_accuracy"][0].value == 1.0  # real verdicts


# ---- 14. display ------------------------------------------------------------------------------------------------

HOSTILE = "clear\x1b[2J title\x1b]0;pwned\x07 cr\rover nul\x00 bs\x08 csi\x9b31m nel\x85 rtl\u202eevil del\x7f"


def _unsafe_chars(text: str) -> list[str]:
    """Characters a terminal or a bidi renderer would act on: controls but newline and tab, and format
    characters of the bidi family."""
    bidi = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}
    return [c for c in text if (unicodedata.category(c) == "Cc" and c not in "\n\t") or c in bidi]


def test_printable_escapes_controls_c1_and_bidi_and_keeps_layout():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert printable("x\ry\x00z\x08") == "x\\x0dy\\x00z\\x08"
    assert printable("\x80\x9f\u202e\u2066\u2028") == "\\x80\\x9f\\u202e\\u2066\\u2028"
    assert printable("line 1\n\tline 2 \\frac{1}{2} 答案 é") == "line 1\n\tline 2 \\frac{1}{2} 答案 é"  # as is
    every = "".join(map(chr, range(0x00, 0xA0))) + "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2069"
    assert _unsafe_chars(printable(every)) == []


def _hostile_run(tmp_path: Path) -> Path:
    prompt = Prompt("p0", "Q: what is 2+2?\u202e", {"answer": "4"})
    comps = [
        Completion(0, prompt, [1, 2], [7, 7, 7], f"<think>{HOSTILE}\nsecond line</think><answer>4</answer>", "eos"),
        Completion(0, prompt, [1, 2], [7], "<script>alert(1)</script>", "eos"),
    ]
    info = ({"stdout": f"program said {HOSTILE}", "extracted": "4\x1b[31m"}, {})
    scores = RewardScores.weighted([RewardColumn("acc", (1.0, 0.0), info)], {"acc": 1.0})
    run = tmp_path / "run"
    RolloutStore(run).write(1, RolloutBatch(comps), scores, [0.7, -0.7])
    return run


def test_rollouts_cli_shows_hostile_bytes_escaped(tmp_path, capsys):
    run = _hostile_run(tmp_path)
    assert main(["rollouts", str(run), "--max-chars", "2000"]) == 0
    out = capsys.readouterr().out
    assert _unsafe_chars(out) == []  # nothing reaches the terminal raw: no escape sequence, no bidi override
    assert "clear\\x1b[2J" in out and "\\x1b]0;pwned\\x07" in out and "\\u202e" in out  # shown, escaped
    assert "extracted=4\\x1b[31m" in out and out.count("clear\\x1b[2J") == 2  # reward info (program output) too
    assert "second line" in out.split("clear\\x1b[2J", 1)[1]  # the completion's newline stays a line break


def test_notebook_frames_are_escaped_as_text_and_html(tmp_path):
    df = safe_frame(load(_hostile_run(tmp_path)))
    for shown in (df.to_string(), df._repr_html_()):
        assert _unsafe_chars(shown) == []
        assert "\\x1b[2J" in shown
    assert "<script>" not in df._repr_html_() and "&lt;script&gt;" in df._repr_html_()
    assert df["completion"].iloc[0].count("\n") == 1  # layout kept


def test_notebooks_display_rollout_frames_through_safe_frame():
    import nbformat

    for name in ("inspect_rollouts", "custom_reward"):
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert any("from rollouts.view import safe_frame" in c for c in code), name
        for src in code:  # a frame holding model text, shown as a cell's value or by display(), goes through it
            for line in src.splitlines():
                holds_text = re.match(
                    r"(display\()?(df|both|explained|side|disagree|groups\.sort)\w*(\.head|\[|\.reset)", line
                )
                assert not holds_text or "safe_frame(" in line, (name, line)


# ---- 15. totals when a reward fails -------------------------------------------------------------------------------


def _score(specs, completions, columns=None):
    scorer = RewardScorer(bind_rewards(specs, list(columns or {})), max_error_fraction=1.0)
    return scorer.score(["q"] * len(completions), completions, columns or {})


def test_a_crashed_answer_check_gives_no_total_not_a_wrong_answers_score():
    """Before: the crash abstained and the format reward's 0.2 stood as the total - the score of a wrong answer."""
    specs = [RewardSpec(f"{HERE}:crashing_accuracy", 1.0), RewardSpec(f"{HERE}:passing_format", 0.2)]
    scores = _score(specs, ["4", "boom", "5"])
    acc = scores[f"{HERE}:crashing_accuracy"]
    assert acc.values == (1.0, None, 0.0) and acc.failed == (False, True, False)
    assert scores.total == (pytest.approx(1.0 + 0.2), None, pytest.approx(0.0 + 0.2))
    m = scores.metrics()
    assert m["reward_missing"].value == 1 and m["reward_missing_frac"] == pytest.approx(1 / 3)


def test_on_abstain_skip_keeps_the_others_sum_but_a_crash_still_drops_the_sample():
    cols = {"kind": ["math", "code", "math"]}
    specs = [RewardSpec(f"{HERE}:math_only", 1.0), RewardSpec(f"{HERE}:passing_format", 0.5)]
    assert _score(specs, ["4", "x", "5"], cols).total == (1.5, None, 0.5)  # default: drop
    specs[0] = RewardSpec(f"{HERE}:math_only", 1.0, on_abstain="skip")
    assert _score(specs, ["4", "x", "5"], cols).total == (1.5, 0.5, 0.5)  # TRL's nansum for a multi-task reward
    skip_crash = [RewardSpec(f"{HERE}:crashing_accuracy", 1.0, on_abstain="skip"), specs[1]]
    assert _score(skip_crash, ["4", "boom"]).total == (1.5, None)  # a crash is no verdict, whatever on_abstain says
    with pytest.raises(ValueError, match=r"on_abstain: must be one of \['drop', 'skip'\]"):
        RewardSpec("math_accuracy", on_abstain="ignore")


def test_weighted_total_by_hand():
    v = {"a": [1.0, None, 0.5, None], "b": [0.5, 0.5, None, None], "z": [None, 1.0, 1.0, None]}
    w = {"a": 2.0, "b": 1.0, "z": 0.0}  # z: logged only (weight 0), its abstentions never drop a sample
    assert weighted_total(v, w) == [2.0 * 1.0 + 1.0 * 0.5, None, None, None]
    fails = {"a": [False, True, False, False], "b": [False, False, False, False]}
    assert weighted_total(v, w, skip={"a", "b"}, failed=fails) == [2.5, None, 2.0 * 0.5, None]


def test_a_recipe_sets_on_abstain(tmp_path):
    from rl.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards:\n  rules:\n    - {name: math_accuracy, weight: 1.0, on_abstain: skip}\n")
    assert load_recipe(recipe).rewards.rules[0].on_abstain == "skip"
    assert RewardSpec("math_accuracy").on_abstain == "drop"


def test_advantages_leave_out_samples_without_a_total_and_an_empty_group_trains_on_nothing():
    nan = math.nan
    reward_B = torch.tensor([1.2, nan, 0.2, 1.2, nan, nan], dtype=torch.float64)
    group_B = torch.tensor([0, 0, 0, 0, 1, 1])
    adv_B = ADVANTAGES.get("grpo")(reward_B, group_B, std_scale="group")
    mean = (1.2 + 0.2 + 1.2) / 3  # over the three totals; the missing one is not a zero
    std = math.sqrt(((1.2 - mean) ** 2 * 2 + (0.2 - mean) ** 2) / 2)  # unbiased, n - 1 = 2
    expected = [(1.2 - mean) / (std + 1e-4), 0.0, (0.2 - mean) / (std + 1e-4), (1.2 - mean) / (std + 1e-4), 0.0, 0.0]
    assert adv_B.tolist() == pytest.approx(expected)
    rloo = ADVANTAGES.get("rloo")(reward_B, group_B)
    assert rloo.tolist() == pytest.approx([(1.2 - 0.2) / 2, 0.0, (0.2 - 1.2), (1.2 - 0.2) / 2, 0.0, 0.0])
    # ... and out of the loss (the trainer masks them): the all-missing group gives loss 0 and no gradient, no NaN.
    mask_BT = mask_rows(torch.ones(6, 3), torch.isnan(reward_B))
    assert mask_BT.sum(-1).tolist() == [3.0, 0.0, 3.0, 3.0, 0.0, 0.0]
    loss_fn = LOSSES.get("grpo")
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    loss, _ = loss_fn(logp, logp.detach(), adv_B[4:].float(), mask_BT[4:], kl_BT=None, beta=0.0, max_len=3,
                      **loss_fn.resolve(clip_low=None, clip_high=None))  # fmt: skip
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(2, 3))


def test_the_trainer_turns_missing_totals_into_nan_rewards():
    specs = [RewardSpec(f"{HERE}:crashing_accuracy", 1.0), RewardSpec(f"{HERE}:passing_format", 0.2)]
    trainer = _fake_trainer(specs, [])
    batch = _batch(["4", "boom", "5"], [[1], [1], [1]])
    _, reward_B = GRPOTrainer._score(trainer, batch)
    assert reward_B.tolist() == pytest.approx([1.2, math.nan, 0.2], nan_ok=True)


def test_a_step_where_no_sample_has_a_total_trains_on_nothing(tiny_random_model_dir, tmp_path):
    """The real trainer: every sample's weighted reward abstains, so no row has a total - the step runs, its loss is
    0 (not NaN), every row is counted missing, and no parameter moves (no KL, no weight decay)."""
    from rl.config import load_recipe

    rules = f"[{{name: '{HERE}:abstain_always', weight: 1.0}}, {{name: '{HERE}:passing_format', weight: 0.2}}]"
    overrides = ["data.task=arith", "data.num_train=16", "data.num_eval=0", "rollout.max_new_tokens=6"]
    overrides += ["algorithm.num_generations=2", "algorithm.batch_size=4", "training.max_steps=1"]
    overrides += [
        "training.torch_threads=1",
        "logging.progress=false",
        "logging.save_every=0",
        f"rewards.rules={rules}",
    ]
    cfg = load_recipe(None, [f"model.name_or_path={tiny_random_model_dir('qwen3_moe')}", *overrides])
    trainer = GRPOTrainer(cfg, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if p.requires_grad}
    metrics = trainer.train_step()
    assert metrics["loss"] == 0.0 and metrics["reward_missing"] == 4 and metrics["reward_missing_frac"] == 1.0
    assert math.isnan(metrics["reward"]) and metrics["adv_abs_mean"] == 0.0
    after = dict(trainer.policy.model.named_parameters())
    assert all(torch.equal(before[n], after[n].detach()) for n in before)


# ---- 16. token lengths ------------------------------------------------------------------------------------------


def _batch(texts, ids) -> RolloutBatch:
    prompt = Prompt("p0", "Q", {"answer": "4"})
    return RolloutBatch([Completion(0, prompt, [1, 2, 3], i, t, "eos") for t, i in zip(texts, ids, strict=True)])


def _fake_trainer(specs, columns):
    """What ``GRPOTrainer._score`` / ``_score_rewards`` read of the trainer (no model needed)."""
    trainer = SimpleNamespace(
        scorer=RewardScorer(bind_rewards(specs, columns), max_error_fraction=1.0),
        step=0,
        cfg=SimpleNamespace(training=SimpleNamespace(max_steps=4)),
    )
    trainer._score_rewards = lambda batch: GRPOTrainer._score_rewards(trainer, batch)
    return trainer


def test_training_and_rescoring_pass_completion_token_ids(tmp_path, caplog):
    """40 characters in 10 tokens: DAPO's eq. 13 penalty on characters would be -1 where the tokens give -0.25."""
    texts, ids = ["x" * 40, "y" * 8], [list(range(100, 110)), [5, 6]]
    batch = _batch(texts, ids)
    penalty = RewardSpec("overlong_penalty", kwargs={"max_completion_len": 16, "cache_len": 8})
    log = tmp_path / "ids.jsonl"
    specs = [RewardSpec(f"{HERE}:record_ids", 1.0, alias="spy", kwargs={"record_to": str(log)}), penalty]
    scores = GRPOTrainer._score_rewards(_fake_trainer(specs, ["answer"]), batch)  # as train_step and evaluate call
    assert _recorded(log) == [ids]  # the completion's own tokens: no prompt ids, no padding
    assert scores["overlong_penalty"].values == ((8 - 10) / 8, 0.0)  # soft zone starts at 16 - 8 = 8 tokens
    assert REWARDS.get("overlong_penalty")(["q"] * 2, texts, max_completion_len=16, cache_len=8) == [-1.0, 0.0]

    run = tmp_path / "run"
    RolloutStore(run).write(1, batch, scores, [0.0, 0.0])
    df = load(run)
    again = rescore(df, specs)
    assert _recorded(log) == [ids, ids]
    assert again["reward/overlong_penalty"].tolist() == [-0.25, 0.0]  # what training gave
    with caplog.at_level(logging.WARNING, logger="rollouts.rescore"):  # rollouts stored before the column existed
        old = rescore(df.drop(columns="completion_ids"), [penalty])
    assert old["reward/overlong_penalty"].tolist() == [-1.0, 0.0] and "count characters" in caplog.text


def test_completion_lengths_reject_text_passed_as_ids():
    with pytest.raises(TypeError, match=r"completion_ids\[1\] is a str"):
        REWARDS.get("overlong_penalty")(["q"] * 2, ["a", "b"], completion_ids=[[1], "b"])


# ---- 17. parity with TRL's and open-r1's rewards ----------------------------------------------------------------

PEERS = ("think_format_reward", "reasoning_steps_reward", "len_reward", "code_format_reward")


def test_peer_rewards_are_registered_with_a_doctest():
    for name in PEERS:
        assert BUILTIN_REWARDS[name] == "rewards.format" and REWARDS.get(name) is getattr(rewards, name)
        assert ">>>" in REWARDS.get(name).__doc__, name


def _chat(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


FORMAT_CASES = [
    "<think>\nreason\n</think>\n<answer>\n4\n</answer>",
    "<think>\nreason\n</think>\nanswer",
    "<think>a</think>b",
    "<think></think>",
    "<think>\nreason\nno close",
    "x<think>a</think>b",
    "<think>a</think><think>b</think>",
    "<think>a\n</think>\n<answer>\n```python\nprint(1)\n```\n</answer>",
    "<think>\na\n</think>\n<answer>\n```python\nprint(1)\n```\n</answer>",
    "<think>\na\n</think>\n<answer>\nsee ```cpp\nint main(){}\n``` ok\n</answer>\ntrailing",
    "Step 1: add. Step 2: carry.\nFirst, x. Next, y. Finally, z.",
    "1. one\n2. two\n- three\n* four",
    "Second, a\n-b",
    "",
]


def test_think_format_reward_matches_trl():
    from trl.rewards import think_format_reward as trl_think_format_reward

    ours = REWARDS.get("think_format_reward")
    expected = trl_think_format_reward(_chat(FORMAT_CASES))
    assert ours(["q"] * len(FORMAT_CASES), _chat(FORMAT_CASES)) == expected
    assert ours(["q"] * len(FORMAT_CASES), FORMAT_CASES) == expected  # plain strings too
    assert 0.0 < sum(expected) < len(expected)  # the cases tell both outcomes apart


def test_reasoning_steps_and_code_format_match_open_r1():
    n = len(FORMAT_CASES)
    steps = REWARDS.get("reasoning_steps_reward")(["q"] * n, _chat(FORMAT_CASES))
    # open-r1: min(1, matches / 3) of (Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,), no re.M.
    # Case 10: Step 1:, Step 2:, First,, Next,, Finally, (5); case 11: "1." at the start, "\n-", "\n*" (3; "2." is
    # not at the string's start); case 12: "Second,", "\n-" (2).
    assert steps == [0.0] * 10 + [1.0, 1.0, 2 / 3, 0.0]
    # open-r1: re.match(^<think>\n.*?\n</think>\n<answer>\n.*?```{language}.*?```.*?\n</answer>$, DOTALL | M).
    # Case 7 lacks the newline after <think>; case 9's "trailing" line passes because re.M lets $ end a line.
    python = REWARDS.get("code_format_reward")(["q"] * n, _chat(FORMAT_CASES), language="python")
    cpp = REWARDS.get("code_format_reward")(["q"] * n, _chat(FORMAT_CASES), language="cpp")
    assert python == [float(i == 8) for i in range(n)]
    assert cpp == [float(i == 9) for i in range(n)]


def test_len_reward_matches_open_r1_on_one_prompts_group():
    texts = ["\\boxed{4}", "so \\boxed{4}", "x" * 15 + "\\boxed{5}", "so \\boxed{5}"]  # 9, 12, 24, 12 characters
    ours = REWARDS.get("len_reward")(["q"] * 4, texts, answer=["4"] * 4)  # no ids: characters, as open-r1
    # By hand: lam = 0.5 - (len - 9) / (24 - 9); right answers get lam, wrong ones min(0, lam).
    assert ours == pytest.approx([0.5, 0.5 - 3 / 15, min(0.0, 0.5 - 15 / 15), min(0.0, 0.5 - 3 / 15)])
    same = REWARDS.get("len_reward")(["q"] * 2, ["\\boxed{4}", "\\boxed{5}"], answer=["4"] * 2)
    assert same == [0.0, 0.0]  # open-r1: all lengths equal -> zeros


def test_len_reward_takes_min_and_max_per_prompt_and_tokens_with_ids():
    """open-r1 takes them over the whole call; a batch of several groups must not mix their lengths."""
    texts = ["\\boxed{4}", "\\boxed{4} long", "\\boxed{7}", "\\boxed{7} much longer"]
    ids = [[1] * 10, [1] * 20, [1] * 100, [1] * 300]
    out = REWARDS.get("len_reward")(["p", "p", "r", "r"], texts, answer=["4", "4", "7", "7"], completion_ids=ids)
    assert out == [0.5, -0.5, 0.5, -0.5]  # each prompt's shortest 0.5, longest -0.5, whatever the other group's span
