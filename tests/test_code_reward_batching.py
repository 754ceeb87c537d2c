"""The code reward runs each distinct (program, tests) pair once per batch and fans the verdict out in order.
No sandbox needed: ``run_many`` is replaced by a recorder."""

from __future__ import annotations

from rewards.code import reward
from rewards.code.protocol import CodeResult, Outcome


def test_duplicates_run_once_and_keep_batch_order(monkeypatch):
    calls: list[tuple[list, list]] = []

    def fake_run_many(programs, tests, **kw):
        calls.append((programs, tests))
        return [
            CodeResult(float(p == "good\n"), "fake", [Outcome("passed" if p == "good\n" else "failed")])
            for p in programs
        ]

    monkeypatch.setattr(reward, "run_many", fake_run_many)
    t1, t2 = {"stdio": [{"input": "", "output": "1"}]}, '{"stdio": []}'
    comps = [
        "<answer>good</answer>",
        "<answer>bad</answer>",
        "no program",
        "<answer>good</answer>",
        "<answer>good</answer>",
    ]
    tests = [t1, t1, t1, t1, t2]
    scored = reward.code_accuracy.score(["p"] * 5, comps, tests=tests)
    assert [s.value for s in scored] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert scored[2].info["error"] == "no program found"
    # one call; distinct pairs only: (good, t1), (bad, t1), (good, t2) - the same program under other tests reruns
    assert len(calls) == 1 and calls[0][0] == ["good\n", "bad\n", "good\n"]
    assert calls[0][1][2] == t2
