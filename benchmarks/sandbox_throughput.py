"""Sandbox throughput per tier: runs/s over the worker pool and per-run latency, for a trivial program (one
stdio case) and a typical one (ten stdio cases, batched in one process), in Python and in C++ (where a run
includes compiling the program with g++ -O2 in the sandbox). Prints JSON.

    python benchmarks/sandbox_throughput.py [--runs 200] [--tiers bwrap unshare process]

Needs root (each slot runs as its own uid). Latency is measured one run at a time (the per-run overhead of the
sandbox); throughput with every slot busy. Other load on the machine shows up in both, so the load average is
reported alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--tiers", nargs="*", default=["bwrap", "unshare", "process"])
    args = ap.parse_args()
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
