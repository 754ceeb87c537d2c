"""Routing ablation on the tiny recipe: grpo vs gspo vs grpo + routing replay (+ gspo + replay), same seed and budget.

Each variant is ``r1kit train recipes/r1_zero_tiny.yaml`` with the same overrides: full fine-tuning (routers and
experts move) and off-policy updates (``num_iterations=2`` passes in mini-batches of 32 -> 4 updates per step), so
experts can flip between the old-policy forward and later updates. Prints one JSON object: per-variant summary and
per-step curves; ``--plot`` writes the figure used in docs/moe.md.

    python benchmarks/moe_ablation.py --steps 25 --jobs 4 --plot docs/moe_ablation.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "grpo": ["algorithm.loss=grpo"],
    "gspo": ["algorithm.loss=gspo"],
    "grpo+replay": ["algorithm.loss=grpo", "moe.routing_replay=true"],
    "gspo+replay": ["algorithm.loss=gspo", "moe.routing_replay=true"],
}
COMMON = [
    "model.finetune=full",  # routers and experts train: the setting where routing drifts most
    "training.lr=1e-4",  # full fine-tuning of the tiny base; the recipe's 5e-4 is for LoRA
    "algorithm.num_iterations=2",  # mu = 2 passes ...
    "algorithm.mini_batch_size=32",  # ... of 2 mini-batches each: 4 updates per rollout batch, 3 off-policy
    "logging.eval_every=10",
    "logging.save_every=0",
    "logging.progress=false",
]
CURVES = ("reward", "clip_frac", "ratio_mean", "moe/flip_rate", "moe/replay_override_rate", "moe/load_max_over_mean")


def run_variant(name: str, overrides: list[str], steps: int, out: Path, threads: int) -> dict:
    run_dir = out / name.replace("+", "_")
    sets = [f"training.max_steps={steps}", f"training.torch_threads={threads}", *COMMON, *overrides]
    cmd = [
        sys.executable,
        "-m",
        "rl.cli",
        "train",
        str(ROOT / "recipes" / "r1_zero_tiny.yaml"),
        "--output-dir",
        str(run_dir),
        "--overwrite",
        *[a for s in sets for a in ("--set", s)],
    ]
    t0 = time.time()
    with open(out / f"{run_dir.name}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    curves = {k: [r.get(k) for r in rows] for k in CURVES}
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    if not evals or evals[-1][0] != len(rows):
        evals.append((len(rows), summary["final_accuracy"]))
    return {
        "overrides": COMMON + overrides,
        "base_accuracy": summary["base_accuracy"],
        "final_accuracy": summary["final_accuracy"],
        "reward_first5": _mean(curves["reward"][:5]),
        "reward_last5": _mean(curves["reward"][-5:]),
        "clip_frac_mean": _mean(curves["clip_frac"]),
        "ratio_mean_mean": _mean(curves["ratio_mean"]),
        "flip_rate_mean": _mean(curves["moe/flip_rate"]),
        "replay_override_rate_mean": _mean(curves["moe/replay_override_rate"]),
        "load_max_over_mean_mean": _mean(curves["moe/load_max_over_mean"]),
        "seconds": round(time.time() - t0, 1),
        "curves": curves,
        "eval_accuracy": evals,
        "expert_load_last": rows[-1].get("moe/expert_load"),
        "expert_load_layers": rows[-1].get("moe/expert_load_layers"),
    }


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 6) if xs else None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    color = {name: f"C{i}" for i, name in enumerate(VARIANTS)}  # fixed per variant, across panels
    panels = [
        ("reward", "training reward (all sampled completions)"),
        ("moe/flip_rate", "moe/flip_rate"),
        ("clip_frac", "clip fraction (token for grpo, sequence for gspo)"),
        ("moe/replay_override_rate", "live-router flips replay overrode"),
    ]
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for name, r in results.items():
            ys = r["curves"][key]
            if any(y is not None for y in ys):
                ax.plot(range(1, len(ys) + 1), ys, label=name, marker=".", linewidth=1, color=color[name])
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0, 0].legend()
    ax = axes[1, 1]
    for name, r in results.items():
        steps, acc = zip(*([(0, r["base_accuracy"])] + [tuple(e) for e in r["eval_accuracy"]]), strict=True)
        ax.plot(steps, acc, label=name, marker="o", color=color[name])
    ax.set_title("held-out greedy accuracy")
    ax.set_xlabel("step")
    ax = axes[1, 2]
    first = next(iter(results))
    load = results[first]["expert_load_last"]
    if load:
        im = ax.imshow(load, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(load)), [f"layer {i}" for i in results[first]["expert_load_layers"]])
        ax.set_xlabel("expert")
        ax.set_title(f"expert load share, last step ({first})")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "moe_ablation")
    p.add_argument("--jobs", type=int, default=1, help="variants run in parallel (processes)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--plot", type=Path, help="write the figure here (e.g. docs/moe_ablation.png)")
    p.add_argument("--replot", type=Path, help="only redraw --plot from a JSON this script printed")
    args = p.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text())["results"], args.plot)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            v: pool.submit(run_variant, v, VARIANTS[v], args.steps, args.out, args.threads) for v in args.variants
        }
        results = {v: f.result() for v, f in futures.items()}
    if args.plot:
        plot(results, args.plot)
    device = "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") != "" or _has_cuda() else "cpu"
    print(json.dumps({"steps": args.steps, "device": device, "results": results}, indent=1))
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
