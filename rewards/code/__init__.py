"""Code execution rewards: untrusted, model-written programs judged locally in a layered sandbox.

* ``cases``    test formats (stdio / function / asserts, ``check(candidate)`` included) and program extraction
               (Python, or C++ by fence tag)
* ``harness``  runs inside the sandbox: confines itself, runs the program (C++: compiles it with g++, then runs
               it as a child per case; assert tests: runs the test code itself as the judge, the program in a
               child that only answers calls with plain values), reports raw values on a framed pipe
* ``confine``  rlimits, Landlock and seccomp via raw syscalls (used by the harness)
* ``tiers``    bwrap > unshare > process > rlimits (opt-in); chosen at start-up by trying each for real
* ``protocol`` limits, the framed result channel and the verdicts (judged here, in the parent)
* ``slots``    slots (one uid, tmpfs and cgroup each), the pool that retires a slot it cannot clean, clean-up
* ``runner``   the sandbox: tier choice, probes, the guarded run under one time budget per program
* ``reward``   ``code_accuracy`` and ``code_all_pass``

Grading protocol: expected values never enter the sandbox, exit status is never a pass, and only the values the
harness reports are compared, here, by plain type-exact equality.
"""

from __future__ import annotations

from rewards.code.api import get_sandbox, run, run_many
from rewards.code.cases import Case, TestSpec, extract_code, extract_program, parse_tests
from rewards.code.protocol import CodeResult, Limits, Outcome
from rewards.code.reward import code_accuracy, code_all_pass
from rewards.code.runner import Sandbox, SandboxUnavailableError

__all__ = [
    "Case",
    "CodeResult",
    "code_accuracy",
    "code_all_pass",
    "Limits",
    "Outcome",
    "Sandbox",
    "SandboxUnavailableError",
    "TestSpec",
    "extract_code",
    "extract_program",
    "get_sandbox",
    "parse_tests",
    "run",
    "run_many",
]
