"""The reward interface: registry, column binding, output checks, failures abstain and are counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewards.base import REWARDS, Scored, load_reward, register_reward, required_columns
from rewards.scoring import (
    RewardFailureError,
    RewardOutputError,
    RewardScorer,
    RewardSpec,
    bind_rewards,
)

HERE = Path(__file__).with_name("rewards_for_tests.py")


def test_registry_rejects_duplicates_and_lists_known_names():
    # No import of the built-ins first: the registry loads them before any registration, so the clash is caught.
    with pytest.raises(ValueError, match="duplicate reward name 'math_accuracy'"):
        register_reward("math_accuracy")(lambda prompts, completions, **kw: [])
    with pytest.raises(KeyError, match="known: .*math_accuracy"):
        load_reward("math_acuracy")


def test_the_same_module_imported_twice_registers_once(tmp_path):
    """A module loaded both through its package and as a file (pytest's importlib mode with doctests does that)
    defines the same functions again: not a clash. The same name from another file still is."""
    import importlib.util

    src = (
        "from rewards.base import register_reward\n\n@register_reward('_twice')\n"
        "def twice(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"
    )
    (tmp_path / "twice.py").write_text(src)
    (tmp_path / "other.py").write_text(src)
    for name, file in (("twice_a", "twice.py"), ("twice_b", "twice.py"), ("other", "other.py")):
        spec = importlib.util.spec_from_file_location(name, tmp_path / file)
        module = importlib.util.module_from_spec(spec)
        if name == "other":
            with pytest.raises(ValueError, match="duplicate reward name '_twice'"):
                spec.loader.exec_module(module)
        else:
            spec.loader.exec_module(module)
    assert REWARDS.get("_twice")(["p"], ["c"]) == [1.0]


def test_load_by_module_and_by_file_path():
    assert load_reward("rewards.base:required_columns") is required_columns
    fn = load_reward(f"{HERE}:length_reward")
    assert fn(["p"], ["abcd"]) == [0.04]
    with pytest.raises(FileNotFoundError):
        load_reward("nowhere/x.py:f")
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        load_reward(f"{HERE}:nope")


def test_missing_dataset_column_fails_at_bind_time_naming_both():
    with pytest.raises(ValueError, match=r"needs dataset column\(s\) \['solution_text'\].*it has \['answer'\]"):
        bind_rewards([RewardSpec(f"{HERE}:needs_missing_column")], ["answer"])
    bound = bind_rewards([RewardSpec(f"{HERE}:needs_missing_column", columns={"solution_text": "answer"})], ["answer"])
    assert bound[0].column_map["solution_text"] == "answer"


def test_duplicate_labels_need_an_alias():
    spec = RewardSpec(f"{HERE}:length_reward")
    with pytest.raises(ValueError, match="alias"):
        bind_rewards([spec, spec], [])
    bind_rewards([spec, RewardSpec(f"{HERE}:length_reward", alias="len2")], [])


def _scorer(name, **kw):
    return RewardScorer(bind_rewards([RewardSpec(f"{HERE}:{name}")], ["answer"]), **kw)


def test_output_is_checked_and_errors_name_the_reward():
    with pytest.raises(RewardOutputError, match="'.*wrong_length' returned 1 values for 2 completions"):
        _scorer("wrong_length").score(["p", "p"], ["a", "b"], {"answer": ["1", "2"]})
    with pytest.raises(RewardOutputError, match="returns_nan.*finite float or None"):
        _scorer("returns_nan").score(["p"], ["a"], {"answer": ["1"]})


def test_failing_samples_abstain_are_counted_and_the_run_stops_past_the_limit(caplog):
    scorer = _scorer("flaky", max_error_fraction=0.5)
    out = scorer.score(["p"] * 4, ["a", "bb", "c", "dd"], {"answer": ["1"] * 4})
    (flaky,) = out.rewards
    assert flaky.values == (1.0, None, 1.0, None)  # never silently 0
    assert flaky.n_errors == 2 and scorer.error_counts[flaky.label] == 2
    assert flaky.errors == ("RuntimeError: flaky reward failed",) * 2  # the messages, as the stored info holds them
    assert [i.get("error") for i in flaky.info] == [None, flaky.errors[0], None, flaky.errors[1]]
    assert out.total == (1.0, None, 1.0, None)
    assert "flaky reward failed" in caplog.text  # the first traceback is logged
    with pytest.raises(RewardFailureError, match="failed on 3/4 samples"):
        scorer.score(["p"] * 4, ["aa", "bb", "c", "dd"], {"answer": ["1"] * 4})


def test_detailed_reward_is_a_plain_batch_function_too():
    fn = REWARDS.get("math_accuracy")
    assert fn(["q"], ["<think>1+1=2</think><answer>2</answer>"], answer=["2"]) == [1.0]
    scored = fn.score(["q"], ["<answer>3</answer>"], answer=["2"])
    assert isinstance(scored[0], Scored) and scored[0].value == 0.0


def test_builtin_rewards_take_trl_conversational_completions():
    """TRL passes each completion of a conversational dataset as a list of messages; every built-in reward reads
    the last message's content, and gives the same verdict as for the plain string."""
    text = "<think>1+1=2</think><answer>2</answer>"
    chat = [[{"role": "assistant", "content": text}]]
    for name in ("math_accuracy", "r1_format_strict", "r1_format_soft", "tag_count"):
        fn = REWARDS.get(name)
        assert fn(["q"], chat, answer=["2"]) == fn(["q"], [text], answer=["2"]), name
    assert REWARDS.get("math_accuracy")(["q"], chat, answer=["2"]) == [1.0]
    with pytest.raises(TypeError, match="a completion must be a string or a list of chat messages"):
        REWARDS.get("math_accuracy")(["q"], [{"content": text}], answer=["2"])


def test_weights_combine_rewards():
    specs = [RewardSpec(f"{HERE}:length_reward", 2.0), RewardSpec(f"{HERE}:digit_share", 1.0)]
    out = RewardScorer(bind_rewards(specs, [])).score(["p"], ["ab12"], {})
    assert out.total == (pytest.approx(2.0 * 0.04 + 0.5),)


def test_a_rewards_prepare_runs_when_the_scorer_is_built():
    """What a reward depends on (the code rewards: the sandbox) is checked at start-up, not at the first batch."""
    from rewards.scoring import BoundReward, RewardScorer, RewardSpec

    calls = []

    def needs_setup(completions, **kw):
        return [1.0] * len(completions)

    needs_setup.prepare = lambda: calls.append("probed")
    RewardScorer([BoundReward(RewardSpec("x"), needs_setup, {})])
    assert calls == ["probed"]

    def broken(completions, **kw):
        return [1.0] * len(completions)

    def fail():
        raise RuntimeError("no sandbox tier works here")

    broken.prepare = fail
    with pytest.raises(RuntimeError, match="no sandbox tier"):
        RewardScorer([BoundReward(RewardSpec("y"), broken, {})])


def test_code_rewards_probe_the_sandbox_at_start_up():
    from rewards.code import code_accuracy, code_all_pass
    from rewards.code.api import get_sandbox

    assert code_accuracy.prepare is get_sandbox and code_all_pass.prepare is get_sandbox
