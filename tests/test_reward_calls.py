"""Rewards are called as TRL calls them: by keyword, with completion_ids, trainer_state, log_metric and log_extra,
conversational when the data is. So TRL's and open-r1's reward functions run unchanged in r1kit recipes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.base import REWARDS, load_reward, required_columns
from rewards.scoring import (
    RewardFailureError,
    RewardOutputError,
    RewardScorer,
    RewardSetupError,
    RewardSpec,
    bind_rewards,
    trainer_state,
)
from rollouts.adapters import chat_messages
from rollouts.records import Completion, RolloutBatch

OPEN_R1 = Path(__file__).with_name("open_r1_rewards.py")
FOR_TESTS = Path(__file__).with_name("rewards_for_tests.py")
ROOT = Path(__file__).parents[1]


def _file(tmp_path: Path, src: str, name: str = "r.py") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(src)
    return path


def _scorer(specs, columns=(), **kw) -> RewardScorer:
    return RewardScorer(bind_rewards(specs, list(columns)), **kw)


# ---- keyword calls ------------------------------------------------------------------------------------------

SEEN_SRC = """
SEEN = []

def named(answer, completions):  # reversed order: only a keyword call gets it right
    SEEN.append(sorted(locals()))
    return [float(c == a) for c, a in zip(completions, answer, strict=True)]

def anykw(prompts, completions, **kwargs):
    SEEN.append(sorted(kwargs))
    return [0.5] * len(completions)
"""


def test_rewards_get_what_they_name_or_everything_with_kwargs(tmp_path):
    path = _file(tmp_path, SEEN_SRC)
    scorer = _scorer([RewardSpec(f"{path}:named"), RewardSpec(f"{path}:anykw")], ["answer", "level"])
    out = scorer.score(
        ["q", "q"],
        ["4", "5"],
        {"answer": ["4", "4"], "level": [1, 2]},
        completion_ids=[[7], [8, 9]],
        trainer_state=trainer_state(global_step=1, max_steps=5),
    )
    assert out[f"{path}:named"].values == (1.0, 0.0)
    named, anykw = (b.fn.__globals__["SEEN"] for b in scorer.bound)
    assert named == [["answer", "completions"]]  # no trainer_state, log_metric, ... for a function not naming them
    assert anykw == [["answer", "completion_ids", "level", "log_extra", "log_metric", "trainer_state"]]


def test_required_columns_are_the_parameters_trl_does_not_pass():
    from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

    assert required_columns(load_reward(f"{OPEN_R1}:accuracy_reward")) == ["solution"]
    assert required_columns(load_reward(f"{OPEN_R1}:format_reward")) == []
    assert required_columns(load_reward(f"{OPEN_R1}:spy")) == []  # completion_ids, trainer_state, log_*: TRL's
    assert required_columns(accuracy_reward) == ["solution"]
    assert required_columns(think_format_reward) == []
    assert required_columns(get_soft_overlong_punishment(10, 2)) == []  # a callable object: its __call__
    bound = bind_rewards([RewardSpec(f"{OPEN_R1}:accuracy_reward")], ["solution", "level"])[0]
    assert bound.column_map == {"solution": "solution", "level": "level"}  # **kwargs: every column, as in TRL
    renamed = bind_rewards([RewardSpec(f"{OPEN_R1}:accuracy_reward", columns={"solution": "answer"})], ["answer"])
    assert renamed[0].column_map == {"solution": "answer"}


# ---- conversational data ------------------------------------------------------------------------------------


class _ChatTokenizer:
    chat_template = "{% for m in messages %}<{{m.role}}>{{m.content}}\n{% endfor %}<assistant>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


def _prompts(tmp_path, template):
    from rollouts.data import load_prompt_sets

    rows = [{"prompt": f"{i}+1?", "solution": f"${i + 1}$"} for i in range(3)]
    path = _file(tmp_path, "".join(json.dumps(r) + "\n" for r in rows), "d.jsonl")
    sets = load_prompt_sets(
        task=None,
        path=str(path),
        split="train",
        prompt_column="prompt",
        template=template,
        num_train=2,
        num_eval=1,
        seed=0,
        tokenizer=_ChatTokenizer(),
    )
    return sets.train


def test_chat_template_makes_rewards_conversational_exactly_as_trl(tmp_path):
    from trl.rewards import think_format_reward

    texts = ["<think>\na\n</think>\n<answer>\n4\n</answer>", "<think>a</think>4", "4"]
    prompt = _prompts(tmp_path, "chat")[0]
    question = prompt.messages[-1]["content"]
    assert prompt.messages == chat_messages(question) and prompt.text.startswith("<system>")
    batch = RolloutBatch([Completion(0, prompt, [1], [2] * (k + 1), t, "eos") for k, t in enumerate(texts)])
    assert batch.reward_prompts == [chat_messages(question)] * 3
    assert batch.reward_completions == [[{"role": "assistant", "content": t}] for t in texts]
    assert batch.completion_ids == [[2], [2, 2], [2, 2, 2]]
    specs = [RewardSpec(f"{OPEN_R1}:format_reward", alias="fmt"), RewardSpec("trl.rewards:think_format_reward")]
    out = _scorer(specs).score(batch.reward_prompts, batch.reward_completions, batch.columns())
    assert out["fmt"].values == (1.0, 0.0, 0.0)
    assert list(out["trl.rewards:think_format_reward"].values) == think_format_reward(batch.reward_completions)
    assert think_format_reward(batch.reward_completions) == [1.0, 1.0, 0.0]
    # plain templates stay plain text
    plain = RolloutBatch([Completion(0, _prompts(tmp_path, "qa")[0], [1], [2], "4", "eos")])
    assert plain.reward_completions == ["4"] and plain.reward_prompts == plain.prompt_texts


def test_builtin_rewards_take_conversational_prompts():
    chat = [[{"role": "assistant", "content": "<think>we add</think><answer>\\boxed{2}</answer>"}]]
    text = [chat[0][0]["content"]]
    for name in sorted(REWARDS.names()):
        if name.startswith("code_"):  # need the sandbox; they read neither prompts nor anything but completions
            continue
        fn = REWARDS.get(name)
        as_chat = fn(prompts=[chat_messages("1+1?")], completions=chat, answer=["2"])
        assert as_chat == fn(prompts=["1+1?"], completions=text, answer=["2"]), name


# ---- factories ----------------------------------------------------------------------------------------------

FACTORY_SRC = """
MADE = []

def make(bonus):
    MADE.append(bonus)
    return lambda completions, **kw: [bonus] * len(completions)
"""


def test_init_calls_a_factory_once_and_its_result_is_the_reward(tmp_path):
    spec = RewardSpec(
        "trl.rewards:get_soft_overlong_punishment",
        init={"max_completion_len": 10, "soft_punish_cache": 4},
        alias="overlong",
    )
    out = _scorer([spec]).score(["q"] * 3, ["a", "b", "c"], {}, completion_ids=[[1] * 6, [1] * 8, [1] * 11])
    # DAPO eq. 13: 0 up to 10 - 4 tokens, then (6 - n) / 4, -1 past 10
    assert out["overlong"].values == (0.0, (6 - 8) / 4, -1.0)
    path = _file(tmp_path, FACTORY_SRC)
    scorer = _scorer([RewardSpec(f"{path}:make", init={"bonus": 0.25})])
    for _ in range(2):
        assert scorer.score(["q"], ["a"], {})[f"{path}:make"].values == (0.25,)
    assert scorer.bound[0].fn.__globals__["MADE"] == [0.25]


def test_init_maps_from_a_recipe():
    from rl.config import load_recipe

    rule = "{name: 'trl.rewards:get_soft_overlong_punishment', init: {max_completion_len: 64, soft_punish_cache: 16}}"
    cfg = load_recipe(None, [f"rewards.rules=[{rule}]"])
    assert cfg.rewards.rules[0].init == {"max_completion_len": 64, "soft_punish_cache": 16}


# ---- imports ------------------------------------------------------------------------------------------------


def test_builtins_import_by_name():
    import rewards
    from rewards import math_accuracy, tag_count

    assert math_accuracy is REWARDS.get("math_accuracy") and tag_count is REWARDS.get("tag_count")
    for name in rewards.BUILTIN_REWARDS:
        assert getattr(rewards, name) is REWARDS.get(name), name
    with pytest.raises(AttributeError, match="has no attribute 'math_acuracy'"):
        rewards.math_acuracy  # noqa: B018


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_importing_rewards_is_cheap():
    heavy = _fresh(
        "import sys, rewards, rewards.base, rewards.scoring\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sympy', 'latex2sympy2_extended', 'torch'}))"
    )
    assert heavy.strip() == "[]"


@pytest.mark.parametrize(
    "lookup",
    [
        "'math_accuracy' in REWARDS",
        "REWARDS.get('math_accuracy') is not None",
        "REWARDS.names() == sorted(BUILTIN_REWARDS)",
    ],
)
def test_the_registry_loads_the_builtins_on_first_use(lookup):
    assert _fresh(f"from rewards import REWARDS, BUILTIN_REWARDS\nprint({lookup})").strip() == "True"


@pytest.mark.parametrize("module", ["rewards.math", "rewards.math.reward", "rewards.format", "rewards.code.reward"])
def test_importing_a_builtin_module_first_registers_everything(module):
    """A built-in's own registration loads the others (to catch clashes) while its module is half imported; the
    math grader's worker processes start exactly so (``import rewards.math``)."""
    code = f"import {module}\nfrom rewards import REWARDS, BUILTIN_REWARDS\n"
    code += "print(REWARDS.names() == sorted(BUILTIN_REWARDS))"
    assert _fresh(code).strip() == "True"


# ---- errors that name the key and the fix -------------------------------------------------------------------

PLAIN_SRC = """
def plain(completions, answer):
    return [0.0] * len(completions)

def nothing(completions, **kwargs):
    return None

def bad_extra(completions, log_extra, **kwargs):
    log_extra("col", [1])
    return [0.0] * len(completions)
"""


@pytest.mark.parametrize(
    "spec, columns, message",
    [
        (
            RewardSpec("math_acuracy"),
            [],
            r"rewards\.rules\[1\]\.name: unknown reward 'math_acuracy'; did you mean 'math_accuracy'\? Known: "
            r".*code_accuracy, .*tag_count, think_format_reward\. For your own reward give 'package\.module:function'",
        ),
        (
            RewardSpec("nowhere/x.py:f"),
            [],
            r"rewards\.rules\[1\]\.name: reward file 'nowhere/x\.py' does not exist \(relative paths start from the "
            r"current directory, .*\); fix the path in 'nowhere/x\.py:f'",
        ),
        (
            RewardSpec("no_such_pkg_r1kit.rewards:f"),
            [],
            r"rewards\.rules\[1\]\.name: no module named 'no_such_pkg_r1kit' \(from 'no_such_pkg_r1kit\.rewards:f'\); "
            r"fix the spelling or install the package",
        ),
        (
            RewardSpec(f"{OPEN_R1}:acuracy_reward"),
            [],
            r"rewards\.rules\[1\]\.name: '.*open_r1_rewards\.py' has no attribute 'acuracy_reward' .*did you mean "
            r"'accuracy_reward'\?",
        ),
        (
            RewardSpec(f"{OPEN_R1}:accuracy_reward"),
            ["answer"],
            r"rewards\.rules\[1\]\.columns: reward '.*accuracy_reward' needs dataset column\(s\) \['solution'\] which "
            r"the dataset lacks \(it has \['answer'\]\); add them to the data or map them with rewards\.rules\[1\]\."
            r"columns \(e\.g\. \{solution: <column>\}\)",
        ),
        (
            RewardSpec(f"{OPEN_R1}:accuracy_reward", columns={"solution": "sol"}),
            ["answer"],
            r"rewards\.rules\[1\]\.columns: .*needs dataset column\(s\) \['sol'\]",
        ),
        (
            RewardSpec("trl.rewards:get_soft_overlong_punishment", init={"max_len": 3}),
            [],
            r"rewards\.rules\[1\]\.init: calling 'trl\.rewards:get_soft_overlong_punishment' with \{'max_len': 3\} "
            r"raised TypeError: .*; set init to the factory's arguments",
        ),
        (
            RewardSpec("trl.rewards:get_soft_overlong_punishment"),
            [],
            r"rewards\.rules\[1\]\.columns: .*\['max_completion_len', 'soft_punish_cache'\].* if it is a reward "
            r"factory, call it with rewards\.rules\[1\]\.init",
        ),
        (RewardSpec("tag_count"), [], r"rewards\.rules\[1\]\.alias: reward 'tag_count' is listed twice"),
    ],
)
def test_setup_errors_name_the_key_and_the_fix(spec, columns, message):
    with pytest.raises(RewardSetupError, match=message) as e:
        bind_rewards([RewardSpec("tag_count"), spec], columns)
    assert isinstance(e.value, ValueError)


def test_setup_errors_for_a_rewards_own_parameters(tmp_path):
    path = _file(tmp_path, PLAIN_SRC)
    message = r"rewards\.rules\[0\]\.kwargs: .*takes no parameter\(s\) \['tolerence'\] \(it takes "
    with pytest.raises(RewardSetupError, match=message + r"\['completions', 'answer'\]\); fix the spelling"):
        bind_rewards([RewardSpec(f"{path}:plain", kwargs={"tolerence": 1})], ["answer"])
    with pytest.raises(RewardSetupError, match=r"rewards\.rules\[0\]\.columns: .*takes no parameter\(s\) \['answr'\]"):
        bind_rewards([RewardSpec(f"{path}:plain", columns={"answr": "answer"})], ["answer"])


def test_a_failing_import_inside_a_reward_module_is_not_reported_as_a_missing_module(tmp_path):
    path = _file(tmp_path, "import no_such_dependency_r1kit\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_r1kit"):
        bind_rewards([RewardSpec(f"{path}:f")], [])


def test_output_errors_say_what_a_reward_must_return(tmp_path):
    path = _file(tmp_path, PLAIN_SRC)
    with pytest.raises(
        RewardOutputError,
        match=r"reward 'nothing' returned None; it must return a list with one "
        r"float \(or None to abstain\) per completion",
    ):
        _scorer([RewardSpec(f"{path}:nothing", alias="nothing")]).score(["q"], ["a"], {})
    with pytest.raises(RewardOutputError, match=r"logged 1 values of 'col' for 2 completions; log_extra takes one"):
        _scorer([RewardSpec(f"{path}:bad_extra")]).score(["q"] * 2, ["a", "b"], {})


def test_failure_message_names_the_real_key_and_the_fix():
    scorer = _scorer([RewardSpec(f"{FOR_TESTS}:flaky", alias="flaky")], max_error_fraction=0.0)
    with pytest.raises(
        RewardFailureError,
        match=r"'flaky' failed on 1/2 samples, above rewards\.max_error_fraction="
        r"0\.0; fix the reward \(its first traceback is in the log above\), or raise "
        r"rewards\.max_error_fraction",
    ):
        scorer.score(["q"] * 2, ["a", "bb"], {})


# ---- log_metric / log_extra ---------------------------------------------------------------------------------

LOGGING_SRC = """
def logs(completions, log_metric, log_extra, **kwargs):
    log_metric("judge/batch", len(completions))
    log_extra("length", [len(c) for c in completions])
    return [1.0] * len(completions)
"""


def test_log_metric_averages_over_the_step_and_log_extra_joins_the_info(tmp_path):
    scorer = _scorer([RewardSpec(f"{_file(tmp_path, LOGGING_SRC)}:logs", alias="logs")])
    scorer.score(["q"] * 2, ["a", "bb"], {})
    out = scorer.score(["q"] * 4, ["a", "bb", "ccc", "dddd"], {})
    assert scorer.pop_metrics() == {"judge/batch": (2 + 4) / 2} and scorer.pop_metrics() == {}
    assert [i["length"] for i in out["logs"].info] == [1, 2, 3, 4]


# ---- reward files import what lies beside them ----------------------------------------------------------------


def test_a_reward_file_imports_modules_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    _file(tmp_path, "BONUS = 0.25\n", "rw/r1kit_beside_top.py")
    _file(tmp_path, "BONUS = 0.5\n", "rw/r1kit_beside_late.py")
    src = (
        "import r1kit_beside_top\n\n"
        "def r(completions, **kwargs):\n"
        "    import r1kit_beside_late  # imported when the reward runs, not when the file loads\n\n"
        "    return [r1kit_beside_top.BONUS + r1kit_beside_late.BONUS for _ in completions]\n"
    )
    _file(tmp_path, src, "rw/reward.py")
    try:
        out = _scorer([RewardSpec("rw/reward.py:r", alias="r")]).score(["q"], ["a"], {})
        assert out["r"].values == (0.75,) and out["r"].n_errors == 0
        assert sys.path[0] == str(tmp_path / "rw")
    finally:
        for m in ("r1kit_beside_top", "r1kit_beside_late"):
            sys.modules.pop(m, None)


# ---- end to end: TRL and open-r1 rewards in an r1kit recipe -------------------------------------------------


def _chat_model(src: str, dst: Path) -> str:
    """A copy of the tiny model whose tokenizer has a chat template (the character tokenizer has none)."""
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.chat_template = _ChatTokenizer.chat_template
    tok.save_pretrained(dst)
    return str(dst)


@pytest.mark.slow
def test_trl_and_open_r1_rewards_run_unchanged_in_a_chat_recipe(tiny_random_model_dir, tmp_path):
    from trl.rewards import accuracy_reward as trl_accuracy
    from trl.rewards import think_format_reward

    import rollouts
    from rl.config import load_recipe
    from rl.trainer import GRPOTrainer

    model = _chat_model(tiny_random_model_dir("qwen3_moe"), tmp_path / "model")
    data = _file(
        tmp_path,
        "".join(json.dumps({"prompt": f"{a}+{a}=?", "solution": f"${2 * a}$"}) + "\n" for a in range(1, 7)),
        "data.jsonl",
    )
    rules = [
        {"name": f"{OPEN_R1}:accuracy_reward", "alias": "open_r1_accuracy"},
        {"name": f"{OPEN_R1}:format_reward", "alias": "open_r1_format", "weight": 0.5},
        {"name": "trl.rewards:think_format_reward", "alias": "trl_think_format", "weight": 0.5},
        {"name": "trl.rewards:accuracy_reward", "alias": "trl_accuracy"},
        {
            "name": "trl.rewards:get_soft_overlong_punishment",
            "alias": "overlong",
            "init": {"max_completion_len": 8, "soft_punish_cache": 4},
        },
        {"name": f"{OPEN_R1}:spy", "alias": "spy", "weight": 0.0},
    ]
    cfg = load_recipe(
        None,
        [
            f"model.name_or_path={model}",
            "data.task=null",
            f"data.path={data}",
            "data.template=chat",
            "data.num_train=4",
            "data.num_eval=1",
            "rollout.max_new_tokens=8",
            "algorithm.num_generations=4",
            "algorithm.batch_size=8",
            f"rewards.rules={json.dumps(rules)}",
            "training.max_steps=2",
            "training.torch_threads=2",
            "logging.progress=false",
            "logging.save_every=0",
            "logging.plots=false",
            "logging.eval_every=1",
        ],
    )
    run = tmp_path / "run"
    trainer = GRPOTrainer(cfg, run)
    trainer.train()

    df = rollouts.load(run)
    assert len(df) == 16
    chat = [[{"role": "assistant", "content": c}] for c in df["completion"]]
    solution = df["data/solution"].tolist()
    # every stored per-sample value is what the unchanged function gives for that completion
    assert df["reward/open_r1_accuracy"].tolist() == load_reward(f"{OPEN_R1}:accuracy_reward")(chat, solution)
    assert df["reward/open_r1_format"].tolist() == load_reward(f"{OPEN_R1}:format_reward")(chat)
    assert df["reward/trl_think_format"].tolist() == think_format_reward(chat)
    assert df["reward/trl_accuracy"].tolist() == trl_accuracy(chat, solution)
    # DAPO eq. 13 over token counts: 0 up to 8 - 4 tokens, then (4 - n) / 4
    assert df["reward/overlong"].tolist() == [0.0 if n <= 4 else (4 - n) / 4 for n in df["num_tokens"]]
    assert df["reward/spy"].tolist() == [float(n) for n in df["num_tokens"]]
    infos = [json.loads(i) for i in df["reward_info/spy"]]
    assert [i["n_ids"] for i in infos] == df["num_tokens"].tolist()  # log_extra
    assert all("gold_parsed" in json.loads(i) for i in df["reward_info/trl_accuracy"])  # TRL's own log_extra

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for step, m in enumerate(lines, start=1):
        rows = df[df["step"] == step]
        for label in ("open_r1_accuracy", "open_r1_format", "trl_think_format", "trl_accuracy", "overlong"):
            assert m[f"reward/{label}"] == pytest.approx(rows[f"reward/{label}"].mean()), label
        assert m["spy/batch_size"] == 8.0 and m["eval/spy/batch_size"] == 1.0  # log_metric, train and eval

    calls = trainer.scorer.bound[-1].fn.__globals__["CALLS"]
    train = [c for c in calls if len(c["completions"]) == 8]
    assert [(c["global_step"], c["max_steps"]) for c in train] == [(0, 2), (1, 2)]  # trainer_state
    for step, c in enumerate(train, start=1):
        rows = df[df["step"] == step]
        assert [len(ids) for ids in c["completion_ids"]] == rows["num_tokens"].tolist()
        assert c["completions"] == [[{"role": "assistant", "content": t}] for t in rows["completion"]]
        assert all([m["role"] for m in p] == ["system", "user"] for p in c["prompts"])
        assert "solution" in c["columns"] and "prompt" not in c["columns"]
