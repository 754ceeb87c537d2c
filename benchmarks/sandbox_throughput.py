"""Sandbox throughput per tier: runs/s over the worker pool and per-run latency, for a trivial program (one
stdio case) and a typical one (ten stdio cases, batched in one process), in Python and in C++ (where a run
includes compiling the program with g++ -O2 in the sandbox). Prints JSON.

    python benchmarks/sandbox_throughput.py [--runs 200] [--tiers bwrap unshare process]
    python benchmarks/sandbox_throughput.py --baseline-rev REV [--rounds 2]   # this tree against REV, same run

Needs root (each slot runs as its own uid). Latency is measured one run at a time (the per-run overhead of the
sandbox); throughput with every slot busy. Other load on the machine shows up in both, so the load average is
reported alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The tree whose sandbox is measured: this one, or (R1KIT_BENCH_TREE, set by --baseline-rev) a baseline's worktree.
sys.path.insert(0, os.environ.get("R1KIT_BENCH_TREE") or str(Path(__file__).resolve().parents[1]))

from rewards.code import get_sandbox, run, run_many  # noqa: E402
from rewards.code.tiers import TIERS  # noqa: E402

TRIVIAL = ("print(input())\n", {"stdio": [{"input": "x\n", "output": "x\n"}]})
TYPICAL = (
    "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums), max(nums))\n",
    {
        "stdio": [
            {"input": " ".join(map(str, range(i, i + 50))), "output": f"{sum(range(i, i + 50))} {i + 49}"}
            for i in range(10)
        ]
    },
)
TRIVIAL_CPP = (
    '#include <cstdio>\nint main() { char s[64]; if (std::scanf("%63s", s) == 1) std::puts(s); }\n',
    TRIVIAL[1],
)
TYPICAL_CPP = (
    "#include <iostream>\nint main() { long long x, sum = 0, mx = -1; while (std::cin >> x) { sum += x; "
    "if (x > mx) mx = x; } std::cout << sum << ' ' << mx << '\\n'; }\n",
    TYPICAL[1],
)


def latency_ms(program: str, tests: dict, tier: str, n: int, language: str = "python") -> dict[str, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = run(program, tests, backend=tier, language=language)
        times.append((time.perf_counter() - t0) * 1000)
        assert res.pass_fraction == 1.0, res
    times.sort()
    return {
        "median": round(statistics.median(times), 1),
        "p10": round(times[len(times) // 10], 1),
        "p90": round(times[9 * len(times) // 10], 1),
    }


def runs_per_s(program: str, tests: dict, tier: str, n: int, language: str = "python") -> float:
    t0 = time.perf_counter()
    results = run_many([program] * n, [tests] * n, backend=tier, language=language)
    dt = time.perf_counter() - t0
    assert all(r.pass_fraction == 1.0 for r in results)
    return round(n / dt, 1)


COMPARED = ("trivial_runs_per_s", "typical_10case_runs_per_s", "cpp_trivial_runs_per_s")
"""Throughputs compared against a baseline revision (higher is better); latencies by their median (lower is)."""


def _one(script: Path, runs: int, tiers: list[str]) -> dict:
    cmd = [sys.executable, str(script), "--runs", str(runs), "--tiers", *tiers]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def serve(tier: str) -> None:
    """Worker of ``interleaved_latency``: for each line ``N`` on stdin, N trivial runs one at a time in ``tier``;
    prints their latencies (ms) as one JSON line."""
    run(*TRIVIAL, backend=tier)  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(latency_list(*TRIVIAL, tier, int(line))), flush=True)


def latency_list(program: str, tests: dict, tier: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = run(program, tests, backend=tier)
        times.append((time.perf_counter() - t0) * 1000)
        assert res.pass_fraction == 1.0, res
    return times


def interleaved_latency(base: Path, tier: str, blocks: int, per_block: int = 10) -> dict[str, float]:
    """Trivial-run latency of the ``base`` tree and of this one, measured in alternating blocks of ``per_block``
    runs by one long-lived worker per tree, so both see the same moments of the machine's load; medians over all
    runs."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", tier]
    env = {k: v for k, v in os.environ.items() if k != "R1KIT_BENCH_TREE"}
    workers = {
        name: subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=e)
        for name, e in (("baseline", {**env, "R1KIT_BENCH_TREE": str(base)}), ("new", env))
    }
    try:
        for w in workers.values():
            assert w.stdout.readline().strip() == "ready"
        times: dict[str, list[float]] = {name: [] for name in workers}
        for _ in range(blocks):
            for name, w in workers.items():
                w.stdin.write(f"{per_block}\n")
                w.stdin.flush()
                times[name] += json.loads(w.stdout.readline())
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()
    return {name: round(statistics.median(t), 2) for name, t in times.items()}


def compare(rev: str, rounds: int, runs: int, tiers: list[str]) -> dict:
    """This tree's benchmark and ``rev``'s (a git worktree), alternated ``rounds`` times in this one run, so both
    see the same machine and load; ratios are this tree over ``rev`` (median over rounds)."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "-q", "--detach", str(base), rev], check=True)
        old_script = base / "benchmarks" / Path(__file__).name
        try:
            pairs = [(_one(old_script, runs, tiers), _one(Path(__file__), runs, tiers)) for _ in range(rounds)]
            # The old script may predate --serve: this script's worker, importing the old tree's modules.
            latency = {tier: interleaved_latency(base, tier, blocks=max(runs // 10, 4)) for tier in tiers}
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(base)], check=True)
    ratios: dict[str, dict[str, float]] = {}
    for tier in tiers:
        if any("unavailable" in side["tiers"].get(tier, {"unavailable": 1}) for pair in pairs for side in pair):
            continue
        r = {k: [new["tiers"][tier][k] / old["tiers"][tier][k] for old, new in pairs] for k in COMPARED}
        r["trivial_latency_median"] = [
            new["tiers"][tier]["trivial_latency_ms"]["median"] / old["tiers"][tier]["trivial_latency_ms"]["median"]
            for old, new in pairs
        ]
        ratios[tier] = {k: round(statistics.median(v), 3) for k, v in r.items()}
    for tier, med in latency.items():
        if tier in ratios:
            ratios[tier]["trivial_latency_interleaved"] = round(med["new"] / med["baseline"], 3)
    return {
        "baseline_rev": rev,
        "rounds": rounds,
        "runs": runs,
        "ratios_new_over_baseline": ratios,
        "interleaved_trivial_latency_ms": latency,
        "pairs": pairs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--tiers", nargs="*", default=["bwrap", "unshare", "process"])
    ap.add_argument("--baseline-rev", help="also run this benchmark at a git revision, alternating, and give ratios")
    ap.add_argument("--rounds", type=int, default=2, help="with --baseline-rev: alternations of the two")
    ap.add_argument("--serve", metavar="TIER", help=argparse.SUPPRESS)  # worker of interleaved_latency
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.baseline_rev:
        print(json.dumps(compare(args.baseline_rev, args.rounds, args.runs, args.tiers), indent=2))
        return
    sb = get_sandbox()
    out = {
        "slots": len(sb.slots),
        "cpus": os.cpu_count(),
        "chosen_tier": sb.tier.name,
        "load_avg_1m_before": os.getloadavg()[0],
        "tiers": {},
    }
    bare = latency_ms(*TRIVIAL, "rlimits", max(args.runs // 4, 10)) if sb.probe(TIERS.get("rlimits")) is None else None
    for tier in args.tiers:
        why = sb.probe(TIERS.get(tier))
        if why is not None:
            out["tiers"][tier] = {"unavailable": why}
            continue
        run(*TRIVIAL, backend=tier)  # warm-up
        out["tiers"][tier] = {
            "trivial_runs_per_s": runs_per_s(*TRIVIAL, tier, args.runs),
            "typical_10case_runs_per_s": runs_per_s(*TYPICAL, tier, args.runs // 2),
            "trivial_latency_ms": latency_ms(*TRIVIAL, tier, max(args.runs // 4, 10)),
            "typical_latency_ms": latency_ms(*TYPICAL, tier, max(args.runs // 8, 10)),
        }
        if sb.cxx is not None:  # each run compiles: far fewer runs
            n = max(args.runs // 10, 4)
            out["tiers"][tier] |= {
                "cpp_trivial_runs_per_s": runs_per_s(*TRIVIAL_CPP, tier, n, "cpp"),
                "cpp_typical_10case_runs_per_s": runs_per_s(*TYPICAL_CPP, tier, n, "cpp"),
                "cpp_trivial_latency_ms": latency_ms(*TRIVIAL_CPP, tier, n, "cpp"),
                "cpp_typical_latency_ms": latency_ms(*TYPICAL_CPP, tier, n, "cpp"),
            }
    out["rlimits_only_trivial_latency_ms"] = bare  # no namespaces, no uid drop: the floor the tiers add to
    out["load_avg_1m_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
