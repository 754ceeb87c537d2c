from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from rl.cli import main
from rl.config import load_recipe
from rl.reporting.plots import DOWN, FLAT, UP, _load_matrix, _trend, reward_figure, write_plots
from rollouts.store import stored_steps
from rollouts.view import describe, select

ALL_PLOTS = ["reward", "completion_length", "kl", "clip_frac", "entropy", "expert_load"]
MISMATCH_PLOTS = ["mismatch_kl", "mismatch_max_ratio", "mismatch_frac_corrected"]
"""Drawn when the sampler's log-probs were logged (rl.correction's mismatch/* metrics); the fake run has none."""


def test_rollouts_prints_the_latest_step_with_reward_breakdown(fake_run_dir, capsys):
    assert main(["rollouts", str(fake_run_dir)]) == 0
    out = capsys.readouterr().out
    assert "step 3: 8 completions in 2 groups" in out
    assert "showing 8 of 8" in out
    assert "acc 1  extracted=1 gold=1" in out and "fmt abstain" in out
    assert "[bold]x[/bold]" in out  # model output is never parsed as rich markup
    assert "[cut at max_new_tokens]" in out


def test_rollouts_sort_filter_limit(fake_run_dir, capsys):
    argv = [
        "rollouts",
        str(fake_run_dir),
        "--step",
        "2",
        "--sort",
        "length",
        "--limit",
        "3",
        "--filter",
        "`reward/acc` == 1 and group_id == 201",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "showing 2 of 8, sorted by length (descending), filter" in out
    assert "step 2:" in out


def test_rollouts_bad_filter_names_the_columns(fake_run_dir, capsys):
    assert main(["rollouts", str(fake_run_dir), "--filter", "rewrd > 0"]) == 2
    err = capsys.readouterr().err
    assert "--filter 'rewrd > 0'" in err and "reward/acc" in err and "backticks" in err


def test_rollouts_missing_step_or_run(fake_run_dir, tmp_path, capsys):
    assert main(["rollouts", str(fake_run_dir), "--step", "9"]) == 2
    assert "stored: 1-3" in capsys.readouterr().err
    assert main(["rollouts", str(tmp_path)]) == 2
    assert "no rollouts stored" in capsys.readouterr().err


def test_groups_dropped_by_dynamic_sampling_are_marked(fake_step, capsys):
    from rich.console import Console

    from rollouts.store import rollout_table
    from rollouts.view import rollouts_table

    batch, scores, adv_B = fake_step(1, n_groups=2, G=2)
    df = rollout_table(1, batch, scores, adv_B, extra={"kept": [True, True, False, False]}).to_pandas()
    Console(width=200).print(rollouts_table(df))
    assert capsys.readouterr().out.count("dropped") == 2


def test_select_semantics():
    df = pd.DataFrame(
        {
            "reward": [0.0, 1.0, None, 0.5],
            "advantage": [-1.0, 1.0, 0.0, 0.2],
            "num_tokens": [3, 9, 5, 4],
            "reward/a": [0.0, 1.0, None, 0.5],
        }
    )
    assert select(df, sort="reward")["reward"].tolist()[:3] == [1.0, 0.5, 0.0]  # NaN last
    assert select(df, sort="advantage", ascending=True, limit=2).index.tolist() == [0, 2]
    assert select(df, filter_expr="`reward/a` >= 0.5").index.tolist() == [1, 3]
    assert select(df).index.tolist() == [0, 1, 2, 3]


def test_describe_counts_groups_without_signal():
    df = pd.DataFrame({"step": [1] * 6, "group_id": [0, 0, 1, 1, 2, 2], "reward": [1.0, 0.0, 1.0, 1.0, None, None]})
    assert describe(df).endswith("2/3 groups with equal rewards (no learning signal)")


def test_plot_writes_every_png(fake_run_dir, capsys):
    assert main(["plot", str(fake_run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    for name in ALL_PLOTS:
        path = fake_run_dir / "plots" / f"{name}.png"
        assert str(path) in printed
        img = matplotlib.image.imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
        assert img[..., :3].std() > 0.05  # something was drawn
    assert not list((fake_run_dir / "plots").glob(".*"))  # no temp files left


def test_plot_reports_what_was_not_logged(fake_run_dir, capsys):
    metrics = fake_run_dir / "metrics.jsonl"
    metrics.write_text("\n".join(line.split(', "kl"')[0] + "}" for line in metrics.read_text().splitlines()) + "\n")
    result = write_plots(fake_run_dir)
    assert [p.stem for p in result.written] == ["reward"]
    assert set(result.skipped) == set(ALL_PLOTS + MISMATCH_PLOTS) - {"reward"}
    assert "beta = 0" in result.skipped["kl"]
    assert result.skipped["mismatch_kl"] == "'mismatch/kl' not logged"
    assert main(["plot", str(fake_run_dir / "nope")]) == 2


def test_trend_says_whether_it_went_the_good_way():
    up = pd.Series([0.1, 0.2, 0.3, 0.4], index=[1, 2, 3, 4])
    text, color = _trend(up, higher_is_better=True)
    assert color == UP and "▲" in text and text.startswith("0.1 → ")
    assert _trend(up, higher_is_better=False)[1] == DOWN
    assert _trend(up, higher_is_better=None)[1] == FLAT
    assert _trend(pd.Series([0.5, 0.5]), higher_is_better=True) == ("0.5 → 0.5 (= +0)", FLAT)


def test_reward_figure_titles_show_the_change(fake_run_dir):
    from rl.reporting.plots import load_metrics

    fig = reward_figure(load_metrics(fake_run_dir), {"base_accuracy": 0.1, "final_accuracy": 0.7, "steps": 3})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("total reward (weighted): 0.2 → ") and "▲" in titles[0]
    assert titles[1].startswith("acc: 0.3 → ")
    assert titles[2].startswith("fmt: 0.9 → 0.9 (=")  # flat reward: flat colour
    held_out = [line for line in fig.axes[1].lines if line.get_label() == "held-out greedy accuracy"]
    assert held_out and held_out[0].get_xydata().tolist() == [[0.0, 0.1], [3.0, 0.7]]


def test_expert_load_heatmap_first_and_last_step_with_layer_indices(fake_run_dir):
    from rl.reporting.plots import expert_load_figure, load_metrics

    fig = expert_load_figure(load_metrics(fake_run_dir))
    first, last = fig.axes[:2]
    assert first.get_title().startswith("step 1: busiest expert 1.60x") and last.get_title().startswith("step 3:")
    assert [t.get_text() for t in last.get_yticklabels()] == ["1", "3"]
    assert np.allclose(last.images[0].get_array()[1], [0.3 / 0.25, 0.3 / 0.25, 0.3 / 0.25, 0.1 / 0.25])


def test_expert_load_matrix_is_relative_to_uniform():
    m = _load_matrix([[1, 1, 2], [3], []])
    expected_row0 = [1 / (4 / 3), 1 / (4 / 3), 2 / (4 / 3)]  # load / mean load of the layer
    assert np.allclose(m[0], expected_row0)
    assert m[1, 0] == 1.0 and math.isnan(m[1, 1]) and np.isnan(m[2]).all()


@pytest.mark.slow
def test_tiny_run_rollouts_and_plots(tiny_run_dir, capsys):
    assert (tiny_run_dir / "plots" / "reward.png").is_file()  # r1kit train plots at the end of a run
    a = load_recipe(tiny_run_dir / "config.yaml").algorithm
    last = max(stored_steps(tiny_run_dir))
    assert main(["rollouts", str(tiny_run_dir), "--sort", "reward", "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert f"step {last}: {a.batch_size} completions in {a.prompts_per_step} groups" in out
    assert f"showing 4 of {a.batch_size}" in out and "math_accuracy" in out
    assert main(["rollouts", str(tiny_run_dir), "--all-steps", "--filter", "`reward/math_accuracy` == 0"]) == 0
    assert main(["plot", str(tiny_run_dir)]) == 0
    for name in ("reward", "completion_length", "clip_frac"):
        assert (tiny_run_dir / "plots" / f"{name}.png").stat().st_size > 10_000
