"""r1kit's math checker and math-verify side by side on the public equivalence corpus; prints JSON.

Both run in this one process, single-threaded, one case at a time, timed with ``perf_counter`` per case
(r1kit: ``check(gold, pred)`` including any worker round-trip, pool started before timing; math-verify:
``verify(parse(gold), parse(pred))`` with its defaults). Checks/s = cases / total time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from rewards.math.verify import check, pool  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math_equiv_public.jsonl"
DISPUTED = {
    "c0028": "the answer 9 is stated in delimited math; the label asserts a math-verify extraction artefact",
    "c0029": "same as c0028 with \\( \\)",
    "c0180": "x \\in [-2,7] and -2 <= x <= 7 are one set; the label encodes allow_set_relation_comp=False",
    "c0183": "\\text{13} is 13; c0512 is the same pair labelled equal",
    "c0244": "f(x) and f(y) differ as expressions; the label holds only under math-verify's strict=False renaming",
    "c0327": "'11\\n5/6' does not state 5; the label asserts an extraction artefact (convention_note)",
    "c0329": "same as c0327 with \\r\\n",
    "c0413": "comma lists are order-free here (as in Math-Verify and c0187/c0210); hendrycks convention",
    "c0419": "same as c0413",
    "c0449": "1 differs from the gold 1.0001 at the gold's precision; the label encodes a rel_tol=1e-4 grader "
    "(docs/math_checking.md)",
    "c0494": "0.0666668 rounds the gold 0.066666793 to fewer digits, unasked; the label encodes AReaL's rounding of "
    "both sides to 6 decimals",
}


def _mv():
    from math_verify import parse, verify

    return lambda g, p: bool(verify(parse(g), parse(p)))


def run(fn, rows) -> dict:
    verdicts, lat = [], []
    for r in rows:
        t = time.perf_counter()
        verdicts.append(bool(fn(r["gold"], r["pred"])))
        lat.append(time.perf_counter() - t)
    return {"verdicts": verdicts, "lat": lat}


def summary(res: dict, rows: list[dict]) -> dict:
    v, lat = res["verdicts"], sorted(res["lat"])
    labels = [r["equal"] for r in rows]
    tp = sum(a and b for a, b in zip(v, labels, strict=True))
    keep = [i for i, r in enumerate(rows) if r["id"] not in DISPUTED]
    return {
        "agreement": sum(a == b for a, b in zip(v, labels, strict=True)) / len(rows),
        "agreement_excl_disputed": sum(v[i] == labels[i] for i in keep) / len(keep),
        "precision": tp / max(sum(v), 1),
        "recall": tp / max(sum(labels), 1),
        "median_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1e3,
        "max_ms": lat[-1] * 1e3,
        "checks_per_s": len(lat) / sum(lat),
        "disagreements": [rows[i]["id"] for i in range(len(rows)) if v[i] != labels[i]],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.corpus.read_text().splitlines() if line.strip()]
    pool().start()
    ours = summary(run(lambda g, p: check(g, p) is True, rows), rows)
    out = {"cases": len(rows), "disputed": DISPUTED, "r1kit": ours}
    try:
        theirs = summary(run(_mv(), rows), rows)
        out["math_verify"] = theirs
        out["checks_per_s_ratio"] = ours["checks_per_s"] / theirs["checks_per_s"]
    except ImportError as e:
        out["math_verify"] = f"not installed: {e}"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
