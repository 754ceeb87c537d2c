"""Training curves as PNGs (``RUN/plots``), drawn from ``metrics.jsonl``: did reward go up, and was training healthy?

Every curve shows the raw per-step value (thin) under an exponential moving average (thick); a title says where the
smoothed curve started and ended, green when it went the good way. ``write_plots`` draws what the run logged and
reports what it skipped (no ``kl`` without a KL term, no expert-load heatmap without MoE telemetry).

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so plotting is safe in a training process,
headless, and in notebooks (``display(fig)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from core.files import atomic_write
from rl.runlog import read_metrics

if TYPE_CHECKING:
    import pandas as pd

PLOTS_DIR = "plots"
UP, DOWN, FLAT = "#1a7f37", "#cf222e", "#57606a"  # colours of a title: better, worse, unchanged
EXPERT_LOAD = "moe/expert_load"
EXPERT_LOAD_LAYERS = "moe/expert_load_layers"  # the model's layer index of each row (rl/moe/control.py)


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``metrics.jsonl`` as a DataFrame indexed by step (the last record wins for a step logged twice)."""
    import pandas as pd

    records = list(read_metrics(Path(run_dir) / "metrics.jsonl"))
    if not records:
        raise FileNotFoundError(f"no metrics in {Path(run_dir) / 'metrics.jsonl'}: is it an r1kit run directory?")
    df = pd.DataFrame.from_records(records)
    return df.drop_duplicates("step", keep="last").set_index("step").sort_index()


def _span(n: int) -> int:
    """The EMA span for a curve of ``n`` steps."""
    return min(max(n // 10, 2), 50)


def smooth(y: pd.Series) -> pd.Series:
    """Debiased EMA whose span grows with the run (2 for a few steps, 50 at most); NaN steps are skipped.

    >>> import pandas as pd
    >>> smooth(pd.Series([0.0, 1.0, 1.0])).round(3).tolist()
    [0.0, 0.75, 0.923]
    """
    return y.astype(float).ewm(span=_span(len(y)), ignore_na=True).mean()


def _trend(y: pd.Series, higher_is_better: bool | None) -> tuple[str, str]:
    """'0.31 → 0.72 (+0.41)' of the smoothed curve, and the colour saying whether that is good.

    A change is coloured only when it exceeds the noise: twice the standard error of the difference between the
    smoothed curve's ends. The scatter of one step is the raw curve's around the smooth one; the debiased EMA starts
    at the first raw value (one step's scatter) and ends as an average of about ``span`` steps.

    >>> import pandas as pd
    >>> _trend(pd.Series([0.5, 0.6, 0.4, 0.55, 0.45, 0.5, 0.6, 0.4, 0.5, 0.52]), True)[1] == FLAT
    True
    >>> _trend(pd.Series([0.1 * i for i in range(10)]), True)[1] == UP
    True
    """
    raw = y.astype(float).dropna()
    s = smooth(raw)
    if s.empty:
        return "no data", FLAT
    first, last = float(s.iloc[0]), float(s.iloc[-1])
    delta = last - first
    scale = max(abs(first), abs(last), 1e-12)
    noise = float((raw - s).std()) if len(raw) > 2 else 0.0
    within_noise = abs(delta) <= 2 * noise * math.sqrt(1 + 1 / _span(len(raw)))
    if higher_is_better is None or abs(delta) < 1e-3 * scale or within_noise:
        color = FLAT
    else:
        color = UP if (delta > 0) == higher_is_better else DOWN
    arrow = "▲" if delta > 0 else "▼" if delta < 0 else "="
    note = ", within noise" if within_noise and higher_is_better is not None and delta else ""
    return f"{first:.3g} → {last:.3g} ({arrow} {delta:+.3g}{note})", color


def constant_value(y: pd.Series) -> float | None:
    """The value of a series that never changes (None when it does, or has no data).

    >>> import pandas as pd
    >>> constant_value(pd.Series([0.0, 0.0, float("nan")])), constant_value(pd.Series([0.0, 0.1]))
    (0.0, None)
    """
    v = y.astype(float).dropna()
    if v.empty or float(v.max() - v.min()) > 1e-12 * max(1.0, float(v.abs().max())):
        return None
    return float(v.iloc[0])


def _keep_scale(ax, y: pd.Series) -> None:
    """Do not let autoscaling blow noise up into cliffs: show at least 10% of the values' magnitude."""
    v = y.astype(float).dropna()
    if v.empty:
        return
    lo, hi = ax.get_ylim()
    need = max(0.1 * float(v.abs().max()), 1e-3)
    if hi - lo < need:
        mid = (float(v.max()) + float(v.min())) / 2
        ax.set_ylim(mid - need / 2, mid + need / 2)


def _curve(ax, y: pd.Series, color: str) -> None:
    """Raw per-step values (thin, with markers while they are few) under the smoothed curve (thick)."""
    y = y.astype(float)
    ax.plot(
        y.index,
        y.values,
        color=color,
        alpha=0.35,
        lw=1,
        marker="o" if len(y) <= 60 else None,
        ms=3,
        label="raw (per step)",
    )
    ax.plot(y.index, smooth(y).values, color=color, lw=2.5, label="smoothed (EMA)")


def _panel(
    ax,
    y: pd.Series,
    *,
    title: str,
    ylabel: str,
    higher_is_better: bool | None,
    color: str = "C0",
    fraction: bool = False,
) -> None:
    _curve(ax, y, color)
    text, title_color = _trend(y, higher_is_better)
    first = smooth(y).dropna()
    if not first.empty:  # where it started: "went up" is then visible without reading the axis
        ax.axhline(float(first.iloc[0]), color=FLAT, ls=":", lw=1, label="start (smoothed)")
    ax.set_title(f"{title}: {text}", color=title_color, fontsize=11, fontweight="bold")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if fraction:  # a share is read against its whole range: 0.02 must not look like a cliff
        ax.set_ylim(-0.02, min(1.02, max(0.1, 1.2 * float(y.max()))))
    else:
        _keep_scale(ax, y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def reward_keys(df: pd.DataFrame) -> list[str]:
    """Per-reward mean columns (``reward/<name>``, not their ``/abstain_frac`` or ``/errors`` companions)."""
    return [c for c in df.columns if c.startswith("reward/") and c.count("/") == 1]


def reward_figure(df: pd.DataFrame, summary: dict | None = None) -> Figure:
    """One panel per reward (and the weighted total when there are several), with held-out accuracy if logged."""
    keys = reward_keys(df)
    if len(keys) != 1 and "reward" in df:
        keys = ["reward", *keys]
    fig = Figure(figsize=(7, 3.6 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    first_reward = next((k for k in keys if k != "reward"), None)
    for i, (ax, key) in enumerate(zip(axes, keys, strict=True)):
        name = "total reward (weighted)" if key == "reward" else key.removeprefix("reward/")
        _panel(ax, df[key], title=name, ylabel="mean reward per completion", higher_is_better=True, color=f"C{i}")
        if key == first_reward:
            _eval_points(ax, df, summary)
    fig.suptitle("Reward over training (training samples)", fontsize=13)
    return fig


def _eval_points(ax, df: pd.DataFrame, summary: dict | None) -> None:
    """Held-out greedy accuracy (the first reward): base model at step 0, periodic evals, trained model at the end."""
    pts: dict[float, float] = {}
    if summary and summary.get("base_accuracy") is not None:
        pts[0] = summary["base_accuracy"]
    if "eval/accuracy" in df:
        pts.update({float(s): float(v) for s, v in df["eval/accuracy"].dropna().items()})
    if summary and summary.get("final_accuracy") is not None:
        pts[float(summary.get("steps", df.index.max()))] = summary["final_accuracy"]
    if pts:
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], "s--", color="black", ms=6, lw=1, label="held-out greedy accuracy")
        ax.legend(fontsize=8, loc="best")


def length_figure(df: pd.DataFrame) -> Figure:
    has_trunc = "truncated_frac" in df
    fig = Figure(figsize=(7, 6.5 if has_trunc else 3.6), layout="constrained")
    axes = fig.subplots(2 if has_trunc else 1, 1, squeeze=False)[:, 0]
    _panel(axes[0], df["completion_len"], title="mean completion length", ylabel="tokens", higher_is_better=None)
    if "completion_len_max" in df:
        axes[0].plot(df.index, df["completion_len_max"], color="C1", ls="--", lw=1, label="longest completion")
        axes[0].legend(fontsize=8, loc="best")
    if has_trunc:
        _panel(
            axes[1],
            df["truncated_frac"],
            title="truncated (hit max_new_tokens)",
            ylabel="fraction",
            higher_is_better=False,
            color="C3",
            fraction=True,
        )
    fig.suptitle("Completion length", fontsize=13)
    return fig


def metric_figure(
    df: pd.DataFrame,
    key: str,
    *,
    title: str,
    ylabel: str,
    higher_is_better: bool | None = None,
    fraction: bool = False,
    why_constant: str | None = None,
) -> Figure:
    """One metric's curve; a metric that never changed gets a sentence saying so (and why, when known by
    construction) instead of a flat line that reads like a measurement."""
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    value = constant_value(df[key])
    if value is None:
        _panel(ax, df[key], title=title, ylabel=ylabel, higher_is_better=higher_is_better, fraction=fraction)
        return fig
    ax.set_title(f"{title}: {value:.3g} at every step", color=FLAT, fontsize=11, fontweight="bold")
    text = f"{key} = {value:.3g} on all {int(df[key].notna().sum())} logged steps"
    ax.text(
        0.5,
        0.5,
        text + (f"\n{why_constant}" if why_constant else ""),
        ha="center",
        va="center",
        wrap=True,
        fontsize=10,
        transform=ax.transAxes,
    )
    ax.set_axis_off()
    return fig


def why_constant(key: str, config: dict | None) -> str | None:
    """Why a metric cannot change in this run, from its resolved recipe (``RUN/config.yaml``).

    >>> why_constant("clip_frac", {"algorithm": {"num_iterations": 1, "batch_size": 64, "mini_batch_size": None}})
    'by construction: one update per batch, so every ratio is 1 and none is clipped'
    """
    algo = (config or {}).get("algorithm") or {}
    if key == "clip_frac" and algo.get("num_iterations", 1) == 1:
        mb = algo.get("mini_batch_size") or algo.get("batch_size")
        if mb == algo.get("batch_size"):
            return "by construction: one update per batch, so every ratio is 1 and none is clipped"
    mode = ((algo.get("rollout_correction") or {}).get("mode")) or "auto"
    backend = ((config or {}).get("rollout") or {}).get("backend", "transformers")
    if key == "mismatch/frac_corrected" and (mode == "none" or (mode == "auto" and backend != "vllm")):
        return "by construction: algorithm.rollout_correction is off here (mode none), so nothing is corrected"
    return None


def _load_matrix(load: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-layer loads (ragged lists allowed) as layers x experts, each row relative to uniform (1 = balanced)."""
    width = max((len(r) for r in load), default=0)
    m = np.full((len(load), width), np.nan)
    for i, row in enumerate(load):
        r = np.asarray(row, dtype=float)
        if r.size and np.nansum(r) > 0:
            m[i, : r.size] = r / np.nanmean(r)
    return m


def _layer_labels(df: pd.DataFrame, step, n_rows: int) -> list:
    """Row labels of a heatmap: the model's layer indices when logged (``moe/expert_load_layers``), else 0..n-1."""
    layers = df[EXPERT_LOAD_LAYERS].get(step) if EXPERT_LOAD_LAYERS in df else None
    return list(layers) if isinstance(layers, list) and len(layers) == n_rows else list(range(n_rows))


def expert_load_figure(df: pd.DataFrame) -> Figure:
    """Layer x expert heatmaps of ``moe/expert_load`` at the first and last logged step (1 = uniform share)."""
    series = df[EXPERT_LOAD].dropna()
    series = series[series.map(lambda v: isinstance(v, list) and len(v) > 0)]
    if series.empty:
        raise ValueError(f"no {EXPERT_LOAD!r} values in the metrics")
    steps = [series.index[0]] if len(series) == 1 else [series.index[0], series.index[-1]]
    mats = [_load_matrix(series.loc[s]) for s in steps]
    vmax = max(2.0, float(np.nanmax([np.nanmax(m) for m in mats])))
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=vmax)
    n_layers, n_exp = mats[-1].shape
    fig = Figure(
        figsize=(max(5.0, 0.45 * n_exp + 2.5) * len(steps), max(3.0, 0.4 * n_layers + 1.8)), layout="constrained"
    )
    axes = fig.subplots(1, len(steps), squeeze=False)[0]
    for ax, step, m in zip(axes, steps, mats, strict=True):
        im = ax.imshow(m, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
        imb = np.nanmax(m, axis=1)
        ax.set_title(f"step {step}: busiest expert {np.nanmax(imb):.2f}x uniform", fontsize=11)
        ax.set_xlabel("expert")
        ax.set_ylabel("MoE layer")
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]), _layer_labels(df, step, m.shape[0]))
        if m.size <= 256:
            for (r, c), v in np.ndenumerate(m):
                if math.isfinite(v):
                    ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=list(axes), label="load / uniform share (1 = balanced)")
    fig.suptitle("Expert load (share of routed tokens relative to uniform)", fontsize=13)
    return fig


# name -> (metric key, title, y label, higher is better, is a fraction); each is drawn when its key was logged.
SCALAR_PLOTS = {
    "kl": ("kl", "KL to the reference policy", "KL (per token)", None, False),
    "clip_frac": ("clip_frac", "clipped fraction of ratios", "fraction", None, True),
    "entropy": ("entropy", "policy entropy", "nats per token", None, False),
    # The sampler's log-probs against the training forward's (rl.correction): how off-policy the rollouts are.
    "mismatch_kl": ("mismatch/kl", "rollout / training mismatch", "KL(rollout || train) per token", False, False),
    "mismatch_max_ratio": ("mismatch/max_ratio", "largest training / rollout ratio", "ratio", None, False),
    "mismatch_frac_corrected": (
        "mismatch/frac_corrected",
        "share the rollout correction changed",
        "fraction (of tokens or rows)",
        None,
        True,
    ),
}


@dataclass
class PlotResult:
    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """plot name -> why it was not drawn."""


def figures(run_dir: str | Path) -> tuple[dict[str, Figure], dict[str, str]]:
    """Every figure a run's metrics support (name -> Figure), and the reasons for the ones it does not."""
    run_dir = Path(run_dir)
    df = load_metrics(run_dir)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    figs: dict[str, Figure] = {}
    skipped: dict[str, str] = {}
    if reward_keys(df):
        figs["reward"] = reward_figure(df, summary)
    else:
        skipped["reward"] = "no reward/<name> metrics"
    if "completion_len" in df:
        figs["completion_length"] = length_figure(df)
    else:
        skipped["completion_length"] = "no completion_len metric"
    for name, (key, title, ylabel, better, fraction) in SCALAR_PLOTS.items():
        if key in df and df[key].notna().any():
            figs[name] = metric_figure(
                df,
                key,
                title=title,
                ylabel=ylabel,
                higher_is_better=better,
                fraction=fraction,
                why_constant=why_constant(key, config),
            )
        else:
            skipped[name] = f"{key!r} not logged" + (" (algorithm.beta = 0: no KL term)" if key == "kl" else "")
    if EXPERT_LOAD in df and df[EXPERT_LOAD].notna().any():
        figs["expert_load"] = expert_load_figure(df)
    else:
        skipped["expert_load"] = f"{EXPERT_LOAD!r} not logged (dense model, or no router telemetry)"
    return figs, skipped


def save_png(fig: Figure, path: Path) -> None:
    """Atomic PNG write (``core.files.atomic_write``): a reader, or a crash, never sees half an image."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def write_plots(run_dir: str | Path) -> PlotResult:
    """Draw every supported figure of a run into ``RUN/plots/<name>.png``."""
    figs, skipped = figures(run_dir)
    out = PlotResult(skipped=skipped)
    for name, fig in figs.items():
        path = Path(run_dir) / PLOTS_DIR / f"{name}.png"
        save_png(fig, path)
        out.written.append(path)
    return out
