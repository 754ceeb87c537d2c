"""Shared fixtures.

``tiny_random_model_dir``: tiny random MoE models saved locally (no pre-training: they exist to exercise code paths).
``tiny_recipe_run`` (alias ``tiny_run_dir``): the tiny recipe trained once per session, shared by every test that
needs a real run directory. ``fake_step`` / ``fake_run_dir``: hand-made rollouts and metrics for fast tests of what
reads a run directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from rewards.scoring import RewardColumn, RewardScores
from rl.zoo.models import build_char_tokenizer, tiny_model
from rollouts.records import Completion, Prompt, RolloutBatch
from rollouts.store import RolloutStore


@pytest.fixture(scope="session")
def tiny_random_model_dir(tmp_path_factory):
    """``family -> path`` of a randomly initialised tiny MoE with the character tokenizer, built once per session."""
    cache: dict[str, str] = {}

    def get(family: str, **overrides) -> str:
        key = family + repr(sorted(overrides.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{family}")
            tok = build_char_tokenizer()
            model = tiny_model(family, tok, seed=0, **overrides)
            model.save_pretrained(out)
            tok.save_pretrained(out)
            cache[key] = str(out)
        return cache[key]

    return get


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _fresh_r1kit_cache(tmp_path_factory):
    """Build tiny bases into a per-session cache, so tests exercise the build even where ~/.cache holds one."""
    import os

    old = os.environ.get("R1KIT_CACHE")
    os.environ["R1KIT_CACHE"] = str(tmp_path_factory.mktemp("r1kit-cache"))
    yield
    if old is None:
        os.environ.pop("R1KIT_CACHE", None)
    else:
        os.environ["R1KIT_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _no_sandbox_leftovers():
    """After the whole session: the shared code sandbox is closed, and no sandbox made in this process left a
    process (zombies too) or SysV/POSIX IPC object of a slot uid, a claim, a slot cgroup or a work-dir mount
    behind (``rewards.code.runner.leftovers``). Costs nothing when no test imported the sandbox."""
    yield
    import sys

    runner = sys.modules.get("rewards.code.runner")
    if runner is None:
        return
    api = sys.modules.get("rewards.code.api")
    if api is not None and api._SANDBOX is not None:  # the shared one lives until here (atexit would close it)
        api._SANDBOX.close()
    left = runner.leftovers()
    if left:
        pytest.fail("code sandbox leftovers after the test session:\n  " + "\n  ".join(left), pytrace=False)


@pytest.fixture(scope="session")
def tiny_recipe_run(tmp_path_factory, _fresh_r1kit_cache):
    """The README's main job: ``r1kit train recipes/r1_zero_tiny.yaml``, run once per session as a user would.

    Returns the run directory. Shared by the end-to-end acceptance test and the rollout-inspection tests.
    """
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("tiny-recipe-run") / "run"
    recipe = Path(__file__).parents[1] / "recipes" / "r1_zero_tiny.yaml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rl.cli",
            "train",
            str(recipe),
            "--output-dir",
            str(out),
            "--set",
            "logging.progress=false",
            # Also TensorBoard, so the tracker path is checked on a real run (tests/test_trackers.py).
            "--set",
            "logging.trackers=[tensorboard]",
        ],
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return out


@pytest.fixture(scope="session")
def tiny_run_dir(request) -> Path:
    """The real run directory the rollout-inspection tests read: the shared tiny-recipe run, or, to iterate on those
    tests without training, an existing run named by ``$R1KIT_TEST_RUN`` (trained with TensorBoard on)."""
    given = os.environ.get("R1KIT_TEST_RUN")
    return Path(given) if given else request.getfixturevalue("tiny_recipe_run")


def make_step(step: int, n_groups: int = 2, G: int = 4) -> tuple[RolloutBatch, RewardScores, torch.Tensor]:
    """A scored batch of ``n_groups`` groups of ``G``: rewards ``acc`` (weight 1) and ``fmt`` (weight 0.5).

    In every group, completion k answers right when k is even; ``fmt`` abstains on k == 1 (so that row has no total:
    a weighted reward abstained) and ``acc`` too in the last group's k == 1; k == G - 1 was cut at max_new_tokens and
    has no logprobs; k == 2 holds rich markup, which must print literally.
    """
    comps, acc, fmt, info = [], [], [], []
    for g in range(n_groups):
        gid = step * 100 + g
        prompt = Prompt(f"p{gid}", f"Q: {g}+1\nA:", {"answer": str(g + 1)})
        for k in range(G):
            answer = g + 1 if k % 2 == 0 else 0
            text = f"<think>{g}+1={g + 1}</think><answer>{answer}</answer>" + (" [bold]x[/bold]" if k == 2 else "")
            logprobs = None if k == G - 1 else [-0.5 * (k + 1), -1.5 * (k + 1)]
            finish = "length" if k == G - 1 else "eos"
            comps.append(Completion(gid, prompt, [1, 2], [7] * (2 + k), text, finish, logprobs))
            abstain_all = g == n_groups - 1 and k == 1
            acc.append(None if abstain_all else float(k % 2 == 0))
            fmt.append(None if k == 1 else 1.0)
            info.append({"extracted": str(answer), "gold": str(g + 1)})
    columns = [RewardColumn("acc", tuple(acc), tuple(info)), RewardColumn("fmt", tuple(fmt), ({},) * len(fmt))]
    scores = RewardScores.weighted(columns, {"acc": 1.0, "fmt": 0.5})
    adv_B = torch.tensor([0.5 if k % 2 == 0 else -0.5 for _ in range(n_groups) for k in range(G)])
    return RolloutBatch(comps), scores, adv_B


@pytest.fixture
def fake_step():
    return make_step


@pytest.fixture
def fake_run_dir(tmp_path: Path) -> Path:
    """3 steps of ``make_step`` rollouts, and metrics with every plotted key (KL, entropy, MoE expert load)."""
    run = tmp_path / "run"
    store = RolloutStore(run)
    lines = []
    for step in (1, 2, 3):
        store.write(step, *make_step(step))
        lines.append(
            {
                "step": step,
                "reward": 0.2 * step,
                "reward/acc": 0.1 + 0.2 * step,
                "reward/fmt": 0.9,
                "reward/acc/abstain_frac": 0.0,
                "kl": 0.01 * step,
                "clip_frac": 0.02,
                "entropy": 1.0 - 0.1 * step,
                "completion_len": 10.0 + step,
                "completion_len_max": 20,
                "truncated_frac": 0.25,
                "moe/expert_load": [[0.25, 0.25, 0.4, 0.1], [0.1 * step, 0.3, 0.3, 0.4 - 0.1 * step]],
                "moe/expert_load_layers": [1, 3],  # the first layer is dense
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return run
