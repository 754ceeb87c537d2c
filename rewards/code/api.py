"""Public entry points: ``run`` (one program) and ``run_many`` (a batch, in parallel over the slots)."""

from __future__ import annotations

import atexit
import dataclasses
import os
import threading
from typing import Any

from rewards.code.cases import extract_code, parse_tests
from rewards.code.protocol import CodeResult, Limits
from rewards.code.runner import Sandbox
from rewards.code.tiers import TIERS

_SANDBOX: Sandbox | None = None
_LOCK = threading.Lock()


def get_sandbox() -> Sandbox:
    """The process-wide pool, created on first use. Create it before any CUDA context exists (binding a code reward
    calls this at start-up: ``prepare`` in ``rewards.code.reward``): the pool only ever starts fresh processes
    (fork+exec), but probing early also means a broken sandbox fails the run before any GPU work.
    ``R1KIT_SANDBOX_BACKEND`` forces a tier and ``R1KIT_SANDBOX_ALLOW_WEAK=1`` opts in to the rlimits-only tier."""
    global _SANDBOX
    with _LOCK:
        if _SANDBOX is None:
            _SANDBOX = Sandbox(
                backend=os.environ.get("R1KIT_SANDBOX_BACKEND") or None,
                allow_weak=os.environ.get("R1KIT_SANDBOX_ALLOW_WEAK") == "1",
            )
            atexit.register(_SANDBOX.close)
        return _SANDBOX


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
    language: str = "python",
) -> CodeResult:
    """Run ``program`` against ``tests`` (a test dict or its JSON string) in the sandbox.

    ``language``: ``python`` (every test format) or ``cpp`` (compiled with ``g++ -std=c++17 -O2`` inside the
    sandbox, then judged on ``stdio`` tests; other formats give ``error`` outcomes). A compile error is an
    ``error`` outcome per case carrying the compiler's message.

    ``timeout_s`` (the program's time budget, all cases together: see ``Limits.timeout_s``) and ``memory_mb``
    (per process) override the same fields of ``limits`` (default: the pool's ``Limits()``: 3 s, 512 MB).
    ``backend`` forces a tier (``bwrap``, ``unshare``, ``process``, ``rlimits``) instead of the one chosen at
    start-up. Asserts tests (MBPP lines, HumanEval's ``check(candidate)``) run as written in a judge process
    that the program cannot reach (docs/sandbox.md); ``allow_forgeable`` is accepted for old recipes and has no
    effect (no forgeable mode is left).
    """
    sandbox = get_sandbox()
    base = limits or sandbox.limits
    limits = dataclasses.replace(base, timeout_s=timeout_s or base.timeout_s, memory_mb=memory_mb or base.memory_mb)
    cases = parse_tests(tests).cases
    tier = TIERS.get(backend) if backend is not None else None
    if not cases:
        return CodeResult(0.0, (tier or sandbox.tier).name, [])
    return sandbox.run_cases(
        program, cases, tier=tier, limits=limits, stop_on_fail=stop_on_fail, float_tol=float_tol, language=language
    )


def run_many(
    programs: list[str | None],
    tests: list[Any],
    *,
    extract: bool = False,
    languages: list[str] | None = None,
    **kw: Any,
) -> list[CodeResult | None]:
    """``run`` over a batch in parallel (one worker thread per slot); ``None`` programs give ``None``. With
    ``extract=True`` the items are completions: the program and its language come from each completion's code
    block (``extract_code``). ``languages`` gives one language per program otherwise (default: ``language``
    from ``kw``, else Python)."""
    sandbox = get_sandbox()
    if len(programs) != len(tests):
        raise ValueError(f"run_many: {len(programs)} programs but {len(tests)} test specs")
    if languages is not None and len(languages) != len(programs):
        raise ValueError(f"run_many: {len(programs)} programs but {len(languages)} languages")
    default = kw.pop("language", "python")
    if extract:
        found = [None if p is None else extract_code(p) for p in programs]
        programs = [None if f is None else f[0] for f in found]
        languages = [default if f is None else f[1] for f in found]
    langs = languages or [default] * len(programs)
    futures = [
        None if s is None else sandbox.pool.submit(run, s, t, language=lang, **kw)
        for s, t, lang in zip(programs, tests, langs, strict=True)
    ]
    return [f.result() if f is not None else None for f in futures]
