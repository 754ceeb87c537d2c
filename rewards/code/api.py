"""Public entry points: ``run`` (one program) and ``run_many`` (a batch, in parallel over the slots)."""

from __future__ import annotations

import atexit
import dataclasses
import os
import threading
from typing import Any

from rewards.code.cases import Case, extract_program, parse_tests
from rewards.code.runner import CodeResult, Limits, Outcome, Sandbox
from rewards.code.tiers import TIERS

_SANDBOX: Sandbox | None = None
_LOCK = threading.Lock()


def get_sandbox() -> Sandbox:
    """The process-wide pool, created on first use. Create it before any CUDA context exists (the trainer calls
    this at start-up): the pool only ever starts fresh processes (fork+exec), but probing early also means a
    broken sandbox fails the run before any GPU work. ``R1KIT_SANDBOX_BACKEND`` forces a tier and
    ``R1KIT_SANDBOX_ALLOW_WEAK=1`` opts in to the rlimits-only tier."""
    global _SANDBOX
    with _LOCK:
        if _SANDBOX is None:
            _SANDBOX = Sandbox(
                backend=os.environ.get("R1KIT_SANDBOX_BACKEND") or None,
                allow_weak=os.environ.get("R1KIT_SANDBOX_ALLOW_WEAK") == "1",
            )
            atexit.register(_SANDBOX.close)
        return _SANDBOX


def _cases(tests: Any, allow_forgeable: bool) -> tuple[list[Case], int]:
    spec = parse_tests(tests)
    cases = [c for c in spec.cases if c.kind != "assert" or allow_forgeable]
    return cases, len(spec.cases) - len(cases)


def run(
    program: str,
    tests: Any,
    *,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    backend: str | None = None,
    stop_on_fail: bool = False,
    float_tol: float | None = None,
    allow_forgeable: bool = False,
    limits: Limits | None = None,
) -> CodeResult:
    """Run ``program`` (Python source) against ``tests`` (a test dict or its JSON string) in the sandbox.

    ``timeout_s`` (per case) and ``memory_mb`` (per process) override the same fields of ``limits`` (default: the
    pool's ``Limits()``: 3 s, 512 MB). ``backend`` forces a tier (``bwrap``, ``unshare``, ``process``,
    ``rlimits``) instead of the one chosen at start-up. Asserts that cannot be turned into function cases run
    in the sandbox only with ``allow_forgeable=True`` and their outcomes say ``forgeable``; otherwise they are
    left out (``skipped``).
    """
    sandbox = get_sandbox()
    base = limits or sandbox.limits
    limits = dataclasses.replace(base, timeout_s=timeout_s or base.timeout_s, memory_mb=memory_mb or base.memory_mb)
    cases, skipped = _cases(tests, allow_forgeable)
    tier = TIERS.get(backend) if backend is not None else None
    if not cases:
        return CodeResult(0.0, (tier or sandbox.tier).name, [Outcome("skipped")] * skipped)
    res = sandbox.run_cases(program, cases, tier=tier, limits=limits, stop_on_fail=stop_on_fail, float_tol=float_tol)
    if skipped:  # unconverted asserts are reported but not counted
        res = dataclasses.replace(
            res, outcomes=res.outcomes + [Outcome("skipped", error="forgeable assert")] * skipped
        )
    return res


def run_many(programs: list[str], tests: list[Any], *, extract: bool = False, **kw: Any) -> list[CodeResult | None]:
    """``run`` over a batch in parallel (one worker thread per slot). With ``extract=True`` the items are
    completions and the program is extracted first; ``None`` marks a completion without one."""
    sandbox = get_sandbox()
    if len(programs) != len(tests):
        raise ValueError(f"run_many: {len(programs)} programs but {len(tests)} test specs")
    srcs = [extract_program(p) if extract else p for p in programs]
    futures = [
        sandbox.pool.submit(run, s, t, **kw) if s is not None else None for s, t in zip(srcs, tests, strict=True)
    ]
    return [f.result() if f is not None else None for f in futures]
