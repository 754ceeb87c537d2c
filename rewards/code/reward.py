"""The ``code_accuracy`` and ``code_all_pass`` rewards: extract the program, run it in the sandbox, score."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rewards.base import Scored, completion_texts, register_reward
from rewards.code.api import get_sandbox, run_many
from rewards.code.cases import extract_code
from rewards.code.protocol import CodeResult


def run_unique(
    programs: Sequence[str | None], tests: Sequence[Any], languages: Sequence[str] | None = None, **kw: Any
) -> list[CodeResult | None]:
    """``run_many`` over the distinct (program, language, tests) triples only, fanned back out in order; ``None``
    programs give ``None``. A GRPO group often repeats a completion (more so as the policy sharpens), and each
    run costs a sandbox start (~20-70 ms; a C++ compile far more). A program that is not deterministic gets one
    verdict for all its copies.
    """
    langs = list(languages) if languages is not None else ["python"] * len(programs)
    keys = [
        None if p is None else (p, lang, t if isinstance(t, str) else json.dumps(t, sort_keys=True))
        for p, t, lang in zip(programs, tests, langs, strict=True)
    ]
    unique = list(dict.fromkeys(k for k in keys if k is not None))
    out = run_many([k[0] for k in unique], [k[2] for k in unique], languages=[k[1] for k in unique], **kw)
    results = dict(zip(unique, out, strict=True))
    return [None if k is None else results[k] for k in keys]


def _score(
    completions: Sequence[str],
    tests: Sequence[Any],
    *,
    all_pass: bool,
    no_program: str,
    timeout_s: float,
    memory_mb: int,
    float_tol: float | None,
    allow_forgeable: bool,
    language: str,
) -> list[Scored]:
    if no_program not in ("zero", "abstain"):
        raise ValueError(f"no_program: expected 'zero' or 'abstain', got {no_program!r}")
    if language not in ("auto", "python", "cpp"):
        raise ValueError(f"language: expected 'auto', 'python' or 'cpp', got {language!r}")
    found = [extract_code(c) for c in completion_texts(completions)]
    results = run_unique(
        [None if f is None else f[0] for f in found],
        list(tests),
        [language if language != "auto" or f is None else f[1] for f in found],
        stop_on_fail=all_pass,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        float_tol=float_tol,
        allow_forgeable=allow_forgeable,
    )
    backend = get_sandbox().tier.name
    out = []
    for res in results:
        if res is None:  # no code block in the completion
            out.append(
                Scored(
                    None if no_program == "abstain" else 0.0,
                    {"backend": backend, "outcomes": [], "error": "no program found"},
                )
            )
            continue
        if all(o.status == "skipped" for o in res.outcomes):  # nothing gradable: the tests hold no case at all
            out.append(Scored(None, {"backend": res.backend, "outcomes": [], "error": "no gradable test case"}))
            continue
        value = float(res.pass_fraction == 1.0) if all_pass else res.pass_fraction
        out.append(Scored(value, {"backend": res.backend, "outcomes": res.outcomes_json()}))
    return out


@register_reward("code_accuracy", detailed=True)
def code_accuracy(
    prompts: list[str],
    completions: list[str],
    tests: list[Any],
    *,
    no_program: str = "zero",
    timeout_s: float = 3.0,
    memory_mb: int = 512,
    float_tol: float | None = None,
    allow_forgeable: bool = False,
    language: str = "auto",
    **kwargs: Any,
) -> list[Scored]:
    """Fraction of test cases passed by the last code block of each completion (see ``rewards.code``).

    ``language``: ``auto`` runs a block tagged cpp/c++/cxx/cc as C++ (stdio tests only) and anything else as
    Python; ``python`` or ``cpp`` forces one. ``timeout_s`` is each program's whole time budget (all its cases);
    ``allow_forgeable`` has no effect any more (asserts tests are judged unforgeably; docs/sandbox.md). A program
    that misbehaves in any way scores 0 with the reason in its outcomes; only sandbox faults raise."""
    return _score(
        completions,
        tests,
        all_pass=False,
        no_program=no_program,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        float_tol=float_tol,
        allow_forgeable=allow_forgeable,
        language=language,
    )


@register_reward("code_all_pass", detailed=True)
def code_all_pass(
    prompts: list[str],
    completions: list[str],
    tests: list[Any],
    *,
    no_program: str = "zero",
    timeout_s: float = 3.0,
    memory_mb: int = 512,
    float_tol: float | None = None,
    allow_forgeable: bool = False,
    language: str = "auto",
    **kwargs: Any,
) -> list[Scored]:
    """1.0 when every test case passes, else 0.0; stops a program at its first failing case."""
    return _score(
        completions,
        tests,
        all_pass=True,
        no_program=no_program,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        float_tol=float_tol,
        allow_forgeable=allow_forgeable,
        language=language,
    )


# Probe the sandbox when a recipe's rewards are bound (rewards.scoring.RewardScorer), not at the first code reward:
# a machine where no tier works fails the run at start-up, before any GPU work.
code_accuracy.prepare = get_sandbox
code_all_pass.prepare = get_sandbox
