"""``r1kit eval`` and ``rl.evaluation``: pass@k and maj@k by hand, the policy choices, errors, and one real run."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from core.configio import ConfigError
from rewards.scoring import RewardSpec
from rl.cli import main
from rl.evaluation import (
    PromptResult,
    answer_key,
    check_counts,
    maj_at_k,
    majority_index,
    pass_at_k,
    pick_rules,
    summarize,
)

# ------------------------------------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3, 2) / C(5, 2)
    assert pass_at_k(8, 3, 4) == pytest.approx(1 - 5 / 70)  # 1 - C(5, 4) / C(8, 4)
    assert pass_at_k(5, 0, 2) == 0.0  # nothing right: no subset passes
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every pair holds a right one
    assert pass_at_k(4, 1, 1) == pytest.approx(1 / 4)  # pass@1 is c / n
    assert pass_at_k(3, 3, 3) == 1.0


def test_pass_at_k_product_equals_binomials():
    """The stable product form against the textbook ratio of binomials, on every small (n, c, k)."""
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_stays_finite():
    assert 0.0 < pass_at_k(2000, 1, 1000) < 1.0  # C(2000, 1000) overflows a float; the product does not
    assert pass_at_k(2000, 1, 1000) == pytest.approx(1000 / 2000)


@pytest.mark.parametrize("n, c, k", [(2, 1, 3), (2, 1, 0), (2, 3, 1), (2, -1, 1)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


# -------------------------------------------------------------------------------------------------------- maj@k


def test_majority_vote_and_ties():
    assert majority_index(["3", "4", "4"]) == 1  # "4" twice; its first sample stands for it
    assert majority_index(["4", "3", "3", "4"]) == 0  # 2-2 tie: "4" was sampled first
    assert majority_index(["3", "4", "4", "3"]) == 0  # the same tie, the other way round: "3" first
    assert majority_index([None, None, "7"]) == 2  # no answer, no vote
    assert majority_index([None, None]) is None


def test_maj_at_k_hand_computed():
    answers, correct = ["5", "6", "6", "5", "5"], [True, False, False, True, True]
    assert maj_at_k(answers, correct, 5) == 1.0  # 5 x3 beats 6 x2
    assert maj_at_k(answers, correct, 4) == 1.0  # 2-2 tie: "5" came first
    assert maj_at_k(answers, correct, 3) == 0.0  # "6" x2 within the first three
    assert maj_at_k(answers, correct, 1) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0  # nobody answered: wrong
    with pytest.raises(ValueError, match="maj_at_k"):
        maj_at_k(answers, correct, 6)


def test_answer_key_normalises():
    assert answer_key(" 17. ") == answer_key("17") == "17"
    assert answer_key("1 7") == "17"
    assert answer_key(None) is None and answer_key("  ") is None


def test_summarize_hand_computed():
    """Two prompts, 4 samples each, k = 2; an abstaining greedy answer counts as wrong."""
    a = PromptResult("a", 1.0, 1.0, 10, False, (1.0, 0.0, None, 1.0), ("3", "4", None, "3"), (1.0,) * 4, (10,) * 4)
    b = PromptResult("b", None, None, 30, True, (0.0, 0.0, 0.0, 1.0), ("5", "6", "6", "7"), (0.0,) * 4, (20,) * 4)
    s = summarize([a, b], k=2, with_format=True)
    assert s["accuracy"] == (1.0 + 0.0) / 2
    assert s["format_rate"] == (1.0 + 0.0) / 2
    assert s["completion_len"] == (10 + 30) / 2
    assert s["truncated_frac"] == 1 / 2 and s["abstain_frac"] == 1 / 2
    assert s["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert s["pass@2"] == pytest.approx(((1 - 1 / 6) + (1 - 3 / 6)) / 2)  # 1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2)
    assert s["maj@2"] == (1.0 + 0.0) / 2  # a: "3" vs "4" tie, "3" first (right); b: "5" vs "6" tie, "5" (wrong)
    assert s["sample_accuracy"] == pytest.approx(3 / 8)
    assert s["sample_abstain_frac"] == 1 / 8 and s["sample_completion_len"] == 15.0
    assert summarize([a, b], k=2, with_format=False)["format_rate"] is None


# --------------------------------------------------------------------------------------------- rules and counts


def test_pick_rules_accuracy_and_format():
    rules = [RewardSpec("math_accuracy"), RewardSpec("r1_format_strict", 0.2)]
    assert pick_rules(rules, None, None) == (rules, "math_accuracy", "r1_format_strict")
    assert pick_rules(rules, None, "none")[2] is None
    assert pick_rules(rules, "r1_format_strict", None)[1:] == ("r1_format_strict", None)  # format = another rule
    added, _, fmt = pick_rules(rules[:1], None, "r1_format_soft")  # not in the recipe: scored at weight 0
    assert fmt == "r1_format_soft" and added[-1] == RewardSpec("r1_format_soft", 0.0) and len(rules) == 2
    with pytest.raises(ConfigError, match="--format-reward: 'nope'"):
        pick_rules(rules, None, "nope")


def test_check_counts():
    assert check_counts(k=4, n=None, limit=None) == 4
    with pytest.raises(ConfigError, match="--k: 8 is more than --n=4"):
        check_counts(k=8, n=4, limit=None)
    with pytest.raises(ConfigError, match="--limit"):
        check_counts(k=1, n=1, limit=0)


@pytest.fixture
def config_only_run(tmp_path):
    """A directory with a default config.yaml and no weights: enough for the errors raised before loading."""
    from rl.config import RecipeConfig, dump_recipe

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_recipe(RecipeConfig()))
    return run


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--k", "4", "--n", "2"], "--k: 4 is more than --n=2"),
        (["--data", "no/such/file.jsonl"], "--data: 'no/such/file.jsonl' does not exist"),
        (["--format-reward", "nope"], "--format-reward: 'nope'"),
        (["--temperature", "0"], "--temperature: must be > 0"),
    ],
)
def test_eval_errors_exit_2_naming_the_argument(config_only_run, capsys, extra, names):
    assert main(["eval", str(config_only_run), *extra]) == 2
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err


def test_eval_missing_model_exit_2(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "no-such-run"), "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert "MODEL_OR_RUN:" in err and "does not exist" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_eval_on_the_tiny_run(tiny_run_dir, tmp_path, capsys):
    """The first 64 held-out prompts (two rounds of 32), k = 2: the JSON's fields, pass@2 / maj@2 / accuracy
    recomputed by hand from the per-prompt verdicts, and greedy accuracy close to the trainer's final accuracy.

    On all 256 held-out prompts (no --limit) greedy accuracy equals the trainer's exactly (0.953125 on one run);
    that costs ~10 s on an idle 2-core machine but minutes beside another training job, hence the limit here."""
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_run_dir), "--k", "2", "--limit", "64", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    res, summary = json.loads(out.read_text()), json.loads((tiny_run_dir / "summary.json").read_text())
    s = res["settings"]
    assert (s["k"], s["n"], s["prompts"], s["data"]) == (2, 2, 64, "task arith held out (seed 1234)")
    assert (s["accuracy_reward"], s["format_reward"]) == ("math_accuracy", "r1_format_strict")
    # The same model and greedy decoding as the trainer's final evaluation, on a quarter of its prompts: within
    # sampling error of its accuracy (0.15 is > 6 standard deviations at the tiny run's ~0.95), far above the base's.
    assert res["accuracy"] == pytest.approx(summary["final_accuracy"], abs=0.15)
    assert res["format_rate"] == pytest.approx(summary["final_r1_format_strict"], abs=0.15)
    assert res["completion_len"] == pytest.approx(summary["final_completion_len"], abs=3.0)
    per = res["per_prompt"]
    assert len(per) == s["prompts"] and all(len(p["samples"]) == 2 for p in per)

    def by_hand_pass2(p):
        c = sum(v is not None and v >= 1.0 for v in p["samples"])
        return 1 - math.comb(2 - c, 2) / math.comb(2, 2)

    def by_hand_maj2(p):
        votes = Counter(a for a in p["answers"] if a is not None)
        if not votes:
            return 0.0
        top = max(votes.values())
        winner = next(a for a in p["answers"] if votes.get(a) == top)  # ties: first sampled
        v = p["samples"][p["answers"].index(winner)]
        return float(v is not None and v >= 1.0)

    assert res["pass@2"] == pytest.approx(sum(map(by_hand_pass2, per)) / len(per))
    assert res["maj@2"] == pytest.approx(sum(map(by_hand_maj2, per)) / len(per))
    assert res["accuracy"] == pytest.approx(sum(p["greedy"] or 0.0 for p in per) / len(per))
    for key in ("accuracy", "format_rate", "pass@1", "pass@2", "maj@2", "sample_format_rate"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["pass@1"] <= res["pass@2"]
    assert "pass@2" in captured.out and "maj@2" in captured.out and "greedy accuracy" in captured.out
    assert f"eval: {s['prompts']}/{s['prompts']} prompts" in captured.err
