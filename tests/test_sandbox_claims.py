"""Slot uids are claimed per sandbox (concurrent sandboxes never share one), and what a SIGKILLed runner left
behind - a daemon still running as the slot uid, the slot's tmpfs mount, its work dir, its cgroup - is removed by
the next sandbox that claims the uid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rewards.code import parse_tests
from rewards.code.claims import claim_uids, uid_pids
from rewards.code.runner import Sandbox

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs each slot as its own uid: needs root"),
]

ROOT = Path(__file__).resolve().parents[1]
UID = 62500  # away from the session sandbox's uids (60000 up)
ECHO = parse_tests({"stdio": [{"input": "1\n", "output": "2\n"}]}).cases
PLUS_ONE = "print(int(input()) + 1)\n"


def test_concurrent_sandboxes_get_disjoint_uids():
    a = Sandbox(slots=2, uid_base=UID, candidates=["process"])
    b = Sandbox(slots=2, uid_base=UID, candidates=["process"])
    try:
        ua, ub = {s.uid for s in a.slots}, {s.uid for s in b.slots}
        assert len(ua) == len(ub) == 2 and not ua & ub
        assert a.run_cases(PLUS_ONE, ECHO).pass_fraction == b.run_cases(PLUS_ONE, ECHO).pass_fraction == 1.0
    finally:
        a.close()
        b.close()
    # closed cleanly: the same uids are free again
    c = claim_uids(2, UID)
    try:
        assert {x.uid for x in c} == ua
    finally:
        for x in c:
            x.release()


def test_leftovers_of_a_killed_runner_are_cleaned_by_the_next_claimant():
    # A runner (own process) starts a program that leaves a setsid'ed daemon, and is SIGKILLed mid-run.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from rewards.code import parse_tests
        from rewards.code.runner import Sandbox
        sb = Sandbox(slots=1, uid_base={UID}, candidates=["process"])
        print(sb.slots[0].workdir, *(c.parent for c in (sb.slots[0].cgroup.procs_files if sb.slots[0].cgroup else [])),
              flush=True)
        prog = "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(1000)\\ntime.sleep(1000)\\n"
        sb.run_cases(prog, parse_tests({{"stdio": [{{"input": "", "output": "x"}}]}}).cases)
    """)
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    paths = runner.stdout.readline().split()
    workdir, cgroups = Path(paths[0]), [Path(p) for p in paths[1:]]
    deadline = time.monotonic() + 20
    while len(uid_pids(UID)) < 2 and time.monotonic() < deadline:  # the program and its daemon
        time.sleep(0.05)
    assert len(uid_pids(UID)) >= 2, "the program did not start"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    time.sleep(0.2)
    assert uid_pids(UID), "the daemon should have outlived its runner (nothing cleaned yet)"
    assert os.path.ismount(workdir) and all(d.is_dir() for d in cgroups)

    sb = Sandbox(slots=1, uid_base=UID, candidates=["process"])
    try:
        assert sb.slots[0].uid == UID  # the dead runner's claim was released by the kernel
        assert uid_pids(UID) == [], "the dead runner's daemon survived"
        assert not workdir.exists() and not os.path.ismount(workdir)
        assert not workdir.parent.exists(), "the dead sandbox's folder (harness copy) should be gone"
        assert not any(d.exists() for d in cgroups)
        assert sb.run_cases(PLUS_ONE, ECHO).pass_fraction == 1.0
    finally:
        sb.close()
