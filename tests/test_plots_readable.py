"""Plots a person reads: a metric that cannot change says so, noise is not coloured as a change, and the y axis
does not zoom a flat curve into cliffs."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from rl.reporting.plots import FLAT, UP, _trend, figures, metric_figure


def _run(tmp_path, rows, config=None):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config is not None:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_clip_frac_of_one_on_policy_update_says_it_is_constant_by_construction(tmp_path):
    rows = [{"step": s, "reward/acc": 0.1 * s, "completion_len": 10.0, "clip_frac": 0.0} for s in range(1, 6)]
    run = _run(tmp_path, rows, {"algorithm": {"num_iterations": 1, "batch_size": 64, "mini_batch_size": None}})
    fig = figures(run)[0]["clip_frac"]
    (ax,) = fig.axes
    assert ax.get_title() == "clipped fraction of ratios: 0 at every step"
    text = " ".join(t.get_text() for t in ax.texts)
    assert "clip_frac = 0 on all 5 logged steps" in text and "by construction: one update per batch" in text
    assert not ax.lines, "no flat line of zeros drawn as if it were a measurement"


def test_a_constant_metric_without_a_known_reason_still_says_so(tmp_path):
    rows = [{"step": s, "reward/acc": 0.1 * s, "clip_frac": 0.0} for s in range(1, 4)]
    run = _run(tmp_path, rows, {"algorithm": {"num_iterations": 2, "batch_size": 64}})
    (ax,) = figures(run)[0]["clip_frac"].axes
    assert ax.get_title().endswith("0 at every step")
    assert "construction" not in " ".join(t.get_text() for t in ax.texts)


def test_a_changing_metric_is_drawn_as_a_curve():
    df = pd.DataFrame({"kl": [0.0, 0.01, 0.02, 0.03]}, index=[1, 2, 3, 4])
    (ax,) = metric_figure(df, "kl", title="KL", ylabel="KL").axes
    assert ax.lines and ax.get_title().startswith("KL: ")


def test_noise_sized_changes_are_not_coloured():
    # 40 steps scattering +-0.05 around 0.5: the smoothed ends differ by noise, not by learning
    noisy = pd.Series([0.5 + (0.05 if i % 3 == 0 else -0.03 if i % 3 == 1 else -0.02) for i in range(40)])
    noisy.iloc[-1] -= 0.04
    text, color = _trend(noisy, higher_is_better=True)
    assert color == FLAT and "within noise" in text
    learning = pd.Series([0.2 + 0.02 * i + (0.01 if i % 2 else -0.01) for i in range(40)])
    assert _trend(learning, higher_is_better=True)[1] == UP


def test_the_y_axis_does_not_zoom_noise_into_dips():
    df = pd.DataFrame({"entropy": [0.970, 0.972, 0.969, 0.971, 0.970]}, index=range(1, 6))
    (ax,) = metric_figure(df, "entropy", title="entropy", ylabel="nats").axes
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.097 - 1e-9, "at least 10% of the values' magnitude is shown"
    assert lo <= 0.969 and hi >= 0.972
