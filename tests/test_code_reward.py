"""Functional tests of the code rewards: every test format scores a correct solution 1.0, wrong ones partially,
and extraction follows the rules. Needs a working sandbox tier (root + bubblewrap in CI)."""

from __future__ import annotations

import json
import os

import pytest

from rewards import REWARDS
from rewards.code import extract_code, extract_program, parse_tests, run
from rewards.code.compare import exact_equal, stdout_matches

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs each slot as its own uid: needs root"),
]

ADD_STDIO = {"stdio": [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in [(1, 2), (5, 7), (-3, 3), (10, 0)]]}
ADD_SRC = "a, b = map(int, input().split())\nprint(a + b)\n"
HALF_SRC = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n"  # right on cases 1 and 3 only


def test_stdio_correct_and_partial():
    assert run(ADD_SRC, ADD_STDIO).pass_fraction == 1.0
    res = run(HALF_SRC, ADD_STDIO)
    assert res.pass_fraction == 2 / 4
    assert [o.status for o in res.outcomes] == ["passed", "failed", "passed", "failed"]


def test_stdio_json_string_column_and_float_tolerance():
    tests = json.dumps({"stdio": [{"input": "3\n", "output": "0.3333333333\n"}]})
    src = "print(1 / int(input()))"  # prints 0.3333333333333333
    assert run(src, tests).pass_fraction == 0.0
    assert run(src, tests, float_tol=1e-6).pass_fraction == 1.0


def test_function_format_type_exact():
    tests = {
        "function": {
            "name": "f",
            "cases": [
                {"args": [2], "expected": 4},
                {"args": [1.5], "kwargs": {}, "expected": 3.0},
                {"args": [[1, 2]], "expected": [1, 2, 1, 2]},
            ],
        }
    }
    assert run("def f(x):\n    return x * 2\n", tests).pass_fraction == 1.0
    # float where int is expected, True where 1 is expected: type-exact comparison fails them
    res = run("def f(x):\n    return float(x * 2) if x == 2 else x * 2\n", tests)
    assert res.pass_fraction == 2 / 3


def test_asserts_run_as_written_one_case_each():
    # was: literal asserts became function cases and the rest was skipped; now every assert is a judged case
    asserts = "assert is_even(4) == True\nassert is_even(3) is False\nassert is_even(n=10)\n"
    spec = parse_tests({"asserts": asserts})
    assert [c.kind for c in spec.cases] == ["check", "check", "check"] and spec.judged == 3
    res = run("def is_even(n):\n    return n % 2 == 0\n", {"asserts": asserts})
    assert res.pass_fraction == 1.0
    assert [o.status for o in res.outcomes] == ["passed", "passed", "passed"]


def test_humaneval_check_with_entry_point():
    tests = {
        "asserts": "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n",
        "entry_point": "total",
    }
    assert run("def total(xs):\n    return sum(xs)\n", tests).pass_fraction == 1.0
    assert run("def total(xs):\n    return len(xs)\n", tests).pass_fraction == 1 / 2


def test_non_literal_asserts_are_judged_without_opt_in():
    # was: skipped unless allow_forgeable=True, then run forgeably; now judged unforgeably (the flag is a no-op)
    tests = {"asserts": "assert abs(sq(3) - 9.0) < 1e-9"}
    for opt_in in (False, True):
        res = run("def sq(x):\n    return x * x\n", tests, allow_forgeable=opt_in)
        assert res.pass_fraction == 1.0 and not res.outcomes[0].forgeable
    assert run("def sq(x):\n    return x + x\n", tests).outcomes[0].status == "failed"


def test_stop_on_fail_skips_the_rest():
    res = run(HALF_SRC, ADD_STDIO, stop_on_fail=True)
    assert [o.status for o in res.outcomes] == ["passed", "failed", "skipped", "skipped"]


def test_crash_in_one_case_does_not_sink_the_others():
    src = "import os\nx = int(input())\nif x == 2:\n    os._exit(0)\nprint(x)\n"
    tests = {"stdio": [{"input": f"{i}\n", "output": f"{i}\n"} for i in range(1, 5)]}
    res = run(src, tests)
    assert [o.status for o in res.outcomes] == ["passed", "error", "passed", "passed"]


def test_syntax_error_scores_zero():
    res = run("def f(:\n", ADD_STDIO)
    assert res.pass_fraction == 0.0 and "SyntaxError" in res.outcomes[0].error


@pytest.mark.parametrize("tier", ["bwrap", "unshare", "process"])
def test_every_format_in_every_tier(tier):
    from rewards.code import get_sandbox
    from rewards.code.tiers import TIERS

    why = get_sandbox().probe(TIERS.get(tier))
    if why is not None:
        pytest.skip(f"tier {tier} unavailable here: {why}")
    fn_tests = {"function": {"name": "add", "cases": [{"args": [1, 2], "expected": 3}]}}
    assert run(ADD_SRC, ADD_STDIO, backend=tier).pass_fraction == 1.0
    assert run("def add(a, b):\n    return a + b\n", fn_tests, backend=tier).backend == tier
    add_src = "def add(a, b):\n    return a + b\n"
    assert run(add_src, {"asserts": "assert add(1, 2) == 3"}, backend=tier).pass_fraction == 1.0
    assert run(ADD_CPP, ADD_STDIO, backend=tier, language="cpp").pass_fraction == 1.0


ADD_CPP = "#include <iostream>\nint main() { long long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }\n"
HALF_CPP = (
    '#include <cstdio>\nint main() { int a, b; std::scanf("%d %d", &a, &b); '
    'std::printf("%d\\n", a < 5 ? a + b : 0); }\n'
)


def test_cpp_stdio_correct_partial_and_outcomes():
    assert run(ADD_CPP, ADD_STDIO, language="cpp").pass_fraction == 1.0
    res = run(HALF_CPP, ADD_STDIO, language="cpp")
    assert [o.status for o in res.outcomes] == ["passed", "failed", "passed", "failed"]
    assert res.outcomes[1].stdout == "0\n"
    # a compile error reaches every case with the compiler's message; a non-zero exit is an error even when the
    # output is right; a crash costs one case only (the harness runs each case as its own child); a timeout spends
    # the program's whole budget, so the cases after it are timeouts, unrun (was: each case had its own timeout)
    bad = run("int main() { return x; }", ADD_STDIO, language="cpp")
    assert bad.pass_fraction == 0.0 and "compile error" in bad.outcomes[0].error
    assert "not declared" in bad.outcomes[0].stderr
    rc = run('#include <cstdio>\nint main() { std::puts("3"); return 1; }', ADD_STDIO, language="cpp")
    assert rc.outcomes[0].status == "error" and rc.outcomes[0].error == "exit status 1"
    spin = (  # volatile: -O2 may delete a side-effect-free infinite loop
        '#include <cstdio>\nint main() { int a, b; std::scanf("%d %d", &a, &b); volatile int on = 1; '
        'while (a == 5 && on) {} std::printf("%d\\n", a + b); }\n'
    )
    res = run(spin, ADD_STDIO, language="cpp", timeout_s=1.0)
    assert [o.status for o in res.outcomes] == ["passed", "timeout", "timeout", "timeout"]
    assert res.outcomes[3].error.startswith("not run")


def test_cpp_without_a_compiler_fails_loudly(monkeypatch):
    from rewards.code import SandboxUnavailableError, get_sandbox

    sb = get_sandbox()
    monkeypatch.setattr(sb, "cxx", None)
    monkeypatch.setattr(sb, "_probed", {k: v for k, v in sb._probed.items() if "+" not in k})  # forget C++ probes
    with pytest.raises(SandboxUnavailableError, match="g\\+\\+` not installed"):
        run(ADD_CPP, ADD_STDIO, language="cpp")


def test_cpp_needs_stdio_tests_and_a_known_language():
    res = run(ADD_CPP, {"function": {"name": "add", "cases": [{"args": [1, 2], "expected": 3}]}}, language="cpp")
    assert res.pass_fraction == 0.0 and "stdio tests only" in res.outcomes[0].error
    with pytest.raises(ValueError, match="language: expected 'python' or 'cpp', got 'rust'"):
        run(ADD_CPP, ADD_STDIO, language="rust")


def test_rewards_registered_and_scored():
    completions = [
        f"Sum them:\n```python\n{ADD_SRC}```",
        f"<answer>{HALF_SRC}</answer>",
        "I cannot write code.",
    ]
    tests = [ADD_STDIO] * 3
    acc = REWARDS.get("code_accuracy")
    assert acc(["p"] * 3, completions, tests=tests) == [1.0, 0.5, 0.0]
    assert acc(["p"] * 3, completions, tests=tests, no_program="abstain")[2] is None
    scored = acc.score(["p"] * 3, completions, tests=tests)
    assert scored[0].info["backend"] in ("bwrap", "unshare", "process")
    assert json.loads(json.dumps(scored[1].info["outcomes"]))[1]["status"] == "failed"
    assert REWARDS.get("code_all_pass")(["p"] * 3, completions, tests=tests) == [1.0, 0.0, 0.0]
    chat = [[{"role": "assistant", "content": c}] for c in completions]  # TRL, conversational dataset
    assert acc(["p"] * 3, chat, tests=tests) == [1.0, 0.5, 0.0]


def test_reward_runs_cpp_blocks_by_fence_tag():
    completions = [f"```cpp\n{ADD_CPP}```", f"```c++\n{HALF_CPP}```", f"```python\n{ADD_SRC}```", f"```\n{ADD_CPP}```"]
    acc = REWARDS.get("code_accuracy")
    # an untagged block is Python unless the recipe says otherwise
    assert acc(["p"] * 4, completions, tests=[ADD_STDIO] * 4) == [1.0, 0.5, 1.0, 0.0]
    assert acc(["p"], completions[3:], tests=[ADD_STDIO], language="cpp") == [1.0]
    with pytest.raises(ValueError, match="language: expected 'auto', 'python' or 'cpp'"):
        acc(["p"], completions[:1], tests=[ADD_STDIO], language="c")


def test_extraction_rules():
    assert extract_program("```\nA\n```\ntext\n```py\nB\n```") == "B\n"
    assert extract_program("```cpp\nint main(){}\n```") == "int main(){}\n"
    assert extract_code("```C++\nint main(){}\n```") == ("int main(){}\n", "cpp")
    assert extract_code("```cpp\nA\n```\n```python\nB\n```") == ("B\n", "python")
    assert extract_code("<answer>```cc\nint main(){}\n```</answer>") == ("int main(){}\n", "cpp")
    assert extract_code("<answer>print(2)</answer>") == ("print(2)\n", "python")
    assert extract_program("<think>```python\nX\n```</think><answer>print(1)</answer>") == "X\n"
    assert extract_program("<answer>\nprint(2)\n</answer>") == "print(2)\n"
    assert extract_program("<answer></answer>") is None
    assert extract_program("plain text") is None


def test_comparison_helpers():
    assert stdout_matches("1  2\r\n3\n", "1 2\n3")
    assert not stdout_matches("1 2 3", "1 2\n3")
    assert exact_equal({"a": [1, None]}, {"a": [1, None]}) and not exact_equal({"a": 1}, {"a": 1, "b": 2})
    assert exact_equal(float("nan"), float("nan")) and not exact_equal(0.1 + 0.2, 0.3)
