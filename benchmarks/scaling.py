"""Step time of r1kit and TRL as completion length, group size and model size grow; prints a markdown table.

Each point is one ``benchmarks/vs_trl.py`` comparison (one subprocess per engine, same settings) on a randomly
initialised model of the tiny Qwen3-MoE family (``vs_trl.py``'s default), so completions run to the length cap
and every point decodes the same number of tokens; rewards are not meaningful here. Kept cheap: a few steps, one
repeat per point.

Usage: ``python benchmarks/scaling.py [--json docs/performance_scaling.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vs_trl  # noqa: E402

BASE = ["--steps", "6", "--warmup", "1", "--last", "1", "--repeats", "1", "--no-eval"]
SIZES = {  # hidden size / expert MLP width; 4 layers, 8 experts top-2 throughout (labels: parameter counts)
    "h128": "hidden_size=128",
    "h256": "hidden_size=256,intermediate_size=512,moe_intermediate_size=192",
    "h512": "hidden_size=512,intermediate_size=1024,moe_intermediate_size=384",
}
CURVES = {
    "completion length": [(str(n), ["--max-new-tokens", str(n)]) for n in (32, 64, 128)],
    "group size G": [(str(g), ["--num-generations", str(g)]) for g in (4, 8, 16)],
    "model size": [(name, ["--random-init", spec]) for name, spec in SIZES.items()],  # relabelled with params
}


def point(extra: list[str], threads: int) -> dict:
    argv = [*BASE, "--threads", str(threads), *extra]
    if "--random-init" not in argv:
        argv += ["--random-init", SIZES["h128"]]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        vs_trl.main(argv)
    return json.loads(out.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows = []
    for curve, points in CURVES.items():
        for label, extra in points:
            r = point(extra, a.threads)
            if curve == "model size":
                label = f"{r['settings']['params'] / 1e6:.1f}M params"
            rows.append(
                {
                    "curve": curve,
                    "point": label,
                    **{
                        k: r[k]
                        for k in (
                            "r1kit_step_s",
                            "trl_step_s",
                            "speedup",
                            "r1kit_step_cpu_s",
                            "trl_step_cpu_s",
                            "speedup_cpu",
                            "r1kit_tokens_per_s",
                            "trl_tokens_per_s",
                            "r1kit_peak_rss_mb",
                            "trl_peak_rss_mb",
                        )
                    },
                }
            )
            print(f"{curve} {label}: speedup {r['speedup']:.2f} (cpu {r['speedup_cpu']:.2f})", file=sys.stderr)
    print("| curve | point | r1kit s/step | TRL s/step | speedup | speedup (CPU time) | r1kit tok/s | TRL tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['curve']} | {r['point']} | {r['r1kit_step_s']:.3f} | {r['trl_step_s']:.3f} | {r['speedup']:.2f} "
            f"| {r['speedup_cpu']:.2f} | {r['r1kit_tokens_per_s']:.0f} | {r['trl_tokens_per_s']:.0f} |"
        )
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "base": BASE, "points": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
