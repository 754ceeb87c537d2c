"""Slot hygiene (a slot is as good after any program as before it) and channels between concurrent slots, in
every tier available here. Each sandbox has ONE slot, so the correct program after a hostile one runs on the
very slot the hostile one left. See docs/sandbox_slots.md."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rewards.code import Limits, SandboxUnavailableError, parse_tests
from rewards.code import runner as runner_mod
from rewards.code import slots as slots_mod
from rewards.code.claims import claim_uids, remove_ipc, sysv_ipc_objects, uid_tasks
from rewards.code.runner import Sandbox
from rewards.code.tiers import TIERS

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs each slot as its own uid: needs root"),
]

ROOT = Path(__file__).resolve().parents[1]
UID = 63200  # away from the session sandbox (60000 up) and the claims tests (62500)
LIMITS = Limits(timeout_s=2.0, memory_mb=256, nproc=32, file_mb=16, tmpfs_mb=64, output_kb=64)
F1 = parse_tests({"function": {"name": "f", "cases": [{"args": [1], "expected": 2}]}}).cases
S1 = parse_tests({"stdio": [{"input": "1\n", "output": "2\n"}]}).cases
CORRECT_F = "def f(x):\n    return x + 1\n"
CORRECT_CPP = '#include <cstdio>\nint main() { int a; std::scanf("%d", &a); std::printf("%d\\n", a + 1); }\n'


def stdio(output: str):
    return parse_tests({"stdio": [{"input": "", "output": output}]}).cases


@pytest.fixture(scope="module")
def sandboxes():
    made: dict[str, Sandbox | str] = {}
    yield made
    for sb in made.values():
        if isinstance(sb, Sandbox):
            sb.close()


@pytest.fixture(params=["bwrap", "unshare", "process"])
def sb(request, sandboxes) -> Sandbox:
    """A one-slot sandbox forced to the tier."""
    name = request.param
    if name not in sandboxes:
        try:
            sandboxes[name] = Sandbox(slots=1, uid_base=UID, candidates=[name], limits=LIMITS)
        except SandboxUnavailableError as e:
            sandboxes[name] = str(e)
    if isinstance(sandboxes[name], str):
        pytest.skip(f"tier {name} unavailable here: {sandboxes[name]}")
    return sandboxes[name]


def assert_slot_as_new(sb: Sandbox) -> None:
    """The one slot is in service, empty, holds nothing of its uid, and judges a correct program 1.0."""
    (slot,) = sb.slots
    assert not slot.retired
    assert list(slot.workdir.iterdir()) == []
    assert uid_tasks(slot.uid) == [] and sysv_ipc_objects({slot.uid}) == []
    assert sb.run_cases(CORRECT_F, F1).pass_fraction == 1.0
    assert sb.run_cases(CORRECT_CPP, S1, language="cpp").pass_fraction == 1.0


# -- 11: whatever a program leaves in its work dir -----------------------------------------------------------
ODD_TREE = """
import os, socket, stat
for i in range(300):  # many files, some unreadable or special
    open(f'file{i}', 'w').write('x')
os.chmod('file0', 0)
os.mkfifo('fifo')
os.mknod('sock', 0o600 | stat.S_IFSOCK)
os.symlink('/usr', 'to_usr')
os.makedirs('locked/inner/more')
open('locked/inner/more/f', 'w').write('x')
os.chmod('locked/inner', 0)
os.chmod('locked', 0)
os.symlink('/', 'x' * 255)
top = os.getcwd()
for _ in range(2500):  # deeper than Python's recursion limit and PATH_MAX
    os.mkdir('d')
    os.chdir('d')
open('bottom', 'w').write('x')
try:
    open('/nonexistent/dir/file', 'w')  # a file it cannot create
except OSError:
    pass
os.chmod('.', 0)
os.chmod(top, 0)  # the work dir itself
def f(x):
    return 0
"""


def test_odd_work_dir_contents_do_not_poison_the_slot(sb):
    # Before: shutil.rmtree hit the recursion limit on the deep tree, _kill_slot raised on this run and on every
    # later one (the tree stayed), and close() left the mount, cgroup and claim behind.
    res = sb.run_cases(ODD_TREE, F1)
    assert res.pass_fraction == 0.0 and res.outcomes[0].status == "failed", res.outcomes
    assert_slot_as_new(sb)


def test_an_undeletable_file_gets_a_fresh_work_dir(sb):
    # An immutable file (root's chattr +i; a program cannot set it, but nothing it leaves may poison the slot):
    # emptying fails, so the tmpfs is replaced (the non-tmpfs fallback moves the folder aside).
    (slot,) = sb.slots
    if not slot.tmpfs:
        pytest.skip("slot has no tmpfs")
    (slot.workdir / "stuck").write_text("x")
    subprocess.run(["chattr", "+i", str(slot.workdir / "stuck")], check=True)
    assert sb._kill_slot(slot) is True
    assert os.path.ismount(slot.workdir)
    assert_slot_as_new(sb)


def test_a_slot_that_cannot_be_cleaned_is_retired_loudly(monkeypatch, caplog):
    def cannot(slot, tmpfs_mb):
        raise RuntimeError("no fresh work dir (simulated)")

    sb = Sandbox(slots=1, uid_base=UID + 50, candidates=["process"], limits=LIMITS)
    (slot,) = sb.slots
    try:
        (slot.workdir / "stuck").write_text("x")
        subprocess.run(["chattr", "+i", str(slot.workdir / "stuck")], check=True)
        monkeypatch.setattr(slots_mod, "renew_workdir", cannot)
        with caplog.at_level(logging.ERROR, logger="rewards.code.runner"):
            assert sb.run_cases(CORRECT_F, F1).pass_fraction == 1.0  # judged; the slot is the casualty
        assert "no fresh work dir" in slot.retired
        assert any("taken out of service" in r.getMessage() for r in caplog.records)
        with pytest.raises(SandboxUnavailableError, match="every sandbox slot was taken out of service"):
            sb.run_cases(CORRECT_F, F1)  # never run on the dirty slot, and never hang waiting for it
    finally:
        sb.close()  # cannot clean either: the uid's claim keeps its record
    (claim,) = claim_uids(1, slot.uid)  # the next claimant cleans what is left
    try:
        assert claim.uid == slot.uid and uid_tasks(slot.uid) == [] and not slot.workdir.exists()
    finally:
        claim.release()


def test_the_pool_hands_out_no_retired_slot():
    slots = [runner_mod.Slot(i, 0, Path("/x"), False, None) for i in range(2)]
    pool = slots_mod.SlotPool(slots)
    a, b = pool.get(), pool.get()
    a.retired = "simulated"
    pool.put(a)
    pool.put(b)
    assert pool.get() is b
    b.retired = "simulated"
    pool.put(b)
    for _ in range(2):  # every waiter is told, not only the first
        with pytest.raises(SandboxUnavailableError):
            pool.get(timeout=1)


# -- 11: SysV IPC and POSIX message queues ---------------------------------------------------------------------
IPC_PROGRAM = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
calls = [
    lambda: libc.shmget(0, 64 << 20, 0o1666),  # IPC_PRIVATE | IPC_CREAT | 0666: the hoard that outlived runs
    lambda: libc.msgget(0, 0o1666),
    lambda: libc.semget(0, 1, 0o1666),
    lambda: libc.mq_open(b"/r1kit-hygiene", os.O_CREAT | os.O_RDWR, 0o666, None),
    lambda: libc.shmat(0, None, 0),  # attaching another's segment by a guessed id
]
for call in calls:
    rc = call()
    print("EPERM" if rc == -1 and ctypes.get_errno() == 1 else f"rc={rc} errno={ctypes.get_errno()}")
"""


def test_sysv_ipc_and_message_queues_are_refused(sb):
    # Before: in the process tier the objects outlived the run, mode 0666 was readable by every other slot uid,
    # and a hoard charged to the slot made correct programs fail with "memory".
    res = sb.run_cases(IPC_PROGRAM, stdio("EPERM\n" * 5))
    assert res.pass_fraction == 1.0, res.outcomes
    assert_slot_as_new(sb)


def test_ipc_objects_a_slot_uid_holds_are_removed_after_the_run():
    # The second line, for objects that bypass the filter: made here as the slot uid, outside any sandbox.
    sb = Sandbox(slots=1, uid_base=UID + 60, candidates=["process"], limits=LIMITS)
    try:
        uid = sb.slots[0].uid
        make = (
            "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
            "assert min(libc.shmget(0, 1 << 20, 0o1666), libc.msgget(0, 0o1666), libc.semget(0, 1, 0o1666)) >= 0"
        )
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        subprocess.run([*setpriv, sys.executable, "-I", "-c", make], check=True, cwd="/")
        assert sorted(k for k, _, _ in sysv_ipc_objects({uid})) == ["msg", "sem", "shm"]
        assert sb.run_cases(CORRECT_F, F1).pass_fraction == 1.0
        assert sysv_ipc_objects({uid}) == []
    finally:
        sb.close()


def test_remove_ipc_leaves_other_uids_alone():
    libc = ctypes.CDLL(None, use_errno=True)
    ident = libc.shmget(0, 4096, 0o1600)  # root's own
    assert ident >= 0
    try:
        assert remove_ipc({UID + 999}) == 0
        assert ("shm", ident, 0) in sysv_ipc_objects({0})
    finally:
        libc.shmctl(ident, 0, None)


# -- 11: zombies and the cached C++ probe ----------------------------------------------------------------------
ZOMBIE_RUNNER = """
import ctypes, json, sys
sys.path.insert(0, {root!r})
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us, as to pid 1 of a container
from rewards.code import Limits, parse_tests
from rewards.code.claims import uid_tasks
from rewards.code.runner import Sandbox
limits = Limits(timeout_s=2.0, memory_mb=256, nproc=16, tmpfs_mb=64)
sb = Sandbox(slots=1, uid_base={uid}, candidates=[{tier!r}], limits=limits)
s1 = parse_tests({{"stdio": [{{"input": "1\\n", "output": "2\\n"}}]}}).cases
hostile = "import os\\nfor _ in range(12):\\n    if os.fork() == 0:\\n        os._exit(0)\\nos._exit(0)\\n"
forks = ("import os, time\\npids = []\\nfor _ in range(8):\\n    pid = os.fork()\\n    if pid == 0:\\n"
         "        time.sleep(0.2)\\n        os._exit(0)\\n    pids.append(pid)\\n"
         "for p in pids:\\n    os.waitpid(p, 0)\\nprint(int(input()) + 1)\\n")
cpp = {cpp!r}
out = {{}}
try:
    for _ in range(3):  # 36 zombies would be more than nproc
        sb.run_cases(hostile, s1)
    out["zombies"] = [t for t in uid_tasks(sb.slots[0].uid) if t[1] == "Z"]
    out["forks"] = sb.run_cases(forks, s1).pass_fraction
    out["cpp"] = sb.run_cases(cpp, s1, language="cpp").pass_fraction
    out["retired"] = sb.slots[0].retired
finally:
    sb.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize("tier", ["bwrap", "unshare", "process"])
def test_zombies_do_not_use_up_the_slot(tier):
    # Before: with the runner as pid 1 / subreaper, the killed harness's children stayed zombies of the runner,
    # holding the uid's RLIMIT_NPROC: the next program could not fork, and the C++ probe failed and was cached.
    if TIERS.get(tier).requires() is not None:
        pytest.skip(TIERS.get(tier).requires())
    script = ZOMBIE_RUNNER.format(root=str(ROOT), uid=UID + 100, tier=tier, cpp=CORRECT_CPP)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "SandboxUnavailableError" in proc.stderr:
        pytest.skip(f"tier {tier} unavailable here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out == {"zombies": [], "forks": 1.0, "cpp": 1.0, "retired": ""}


def test_a_failed_probe_is_retried_and_not_believed_for_long(monkeypatch):
    sb = Sandbox(slots=1, uid_base=UID + 70, candidates=["process"], limits=LIMITS)
    try:
        tier, real = sb.tier, runner_mod._probe_run
        runs = []

        def flaky(sandbox, t, language, fail=[True]):  # noqa: B006 -- state across calls
            runs.append(language)
            if fail[0]:
                fail[0] = False
                return "RuntimeError: harness failed before confinement was confirmed (simulated dirty slot)"
            return real(sandbox, t, language)

        monkeypatch.setattr(runner_mod, "_probe_run", flaky)
        assert sb.probe(tier, "cpp") is None and runs == ["cpp", "cpp"]  # failed once, retried, passed
        assert sb.run_cases(CORRECT_CPP, S1, language="cpp").pass_fraction == 1.0

        monkeypatch.setattr(runner_mod, "_probe_run", lambda sandbox, t, language: "simulated")
        sb._probed.pop(f"{tier.name}+cpp")
        assert sb.probe(tier, "cpp") == "simulated"  # failed twice: believed ...
        monkeypatch.setattr(runner_mod, "_probe_run", real)
        assert sb.probe(tier, "cpp") == "simulated"  # ... for a while (no probe per program) ...
        monkeypatch.setattr(runner_mod, "_PROBE_RETRY_S", 0.0)
        assert sb.probe(tier, "cpp") is None  # ... then probed again
    finally:
        sb.close()


# -- 13: channels between concurrent slots ---------------------------------------------------------------------
CHANNEL_PROGRAM = """
import ctypes, fcntl, os, struct
libc = ctypes.CDLL(None, use_errno=True)
shared = os.open(os.path.realpath(os.__file__), os.O_RDONLY)  # a system file every slot sees
lock = struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0)
tries = [
    lambda: fcntl.flock(shared, fcntl.LOCK_SH | fcntl.LOCK_NB),
    lambda: fcntl.lockf(shared, fcntl.LOCK_SH | fcntl.LOCK_NB),
    lambda: fcntl.fcntl(shared, fcntl.F_GETLK, lock),
    lambda: fcntl.fcntl(shared, 37, lock),  # F_OFD_SETLK
    lambda: fcntl.fcntl(os.open("/usr", os.O_RDONLY), fcntl.F_NOTIFY, fcntl.DN_ACCESS),
]
for t in tries:
    try:
        t()
        print("open")
    except OSError as e:
        print("EPERM" if e.errno == 1 else e)
for rc in (libc.inotify_init1(0), libc.syscall(300 if os.uname().machine == "x86_64" else 262, 0, 0)):
    print("EPERM" if rc == -1 and ctypes.get_errno() == 1 else f"rc={rc}")
print(fcntl.fcntl(shared, fcntl.F_GETFD) >= 0)  # ordinary fcntl still works
"""


def test_locks_and_watches_on_shared_files_are_refused(sb):
    # Before: flock/fcntl locks on a read-only fd of the shared /usr worked, so a slot could signal another
    # concurrent one bit by bit (LOCK_EX held or not); inotify saw another slot open a shared file.
    res = sb.run_cases(CHANNEL_PROGRAM, stdio("EPERM\n" * 7 + "True\n"))
    assert res.pass_fraction == 1.0, res.outcomes
    assert_slot_as_new(sb)


def test_other_slot_uids_are_out_of_reach(sb):
    # A process of another uid (as another slot's would be): no signal reaches it, no /proc entry of it is
    # readable, no abstract unix socket can be made, and nothing lands in the host's shared temp folders.
    uid = UID + 300
    other = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "30"])
    program = textwrap.dedent(f"""
        import os, signal, socket
        for act in (lambda: os.kill({other.pid}, signal.SIGKILL), lambda: open('/proc/{other.pid}/environ').read(),
                    lambda: socket.socket(socket.AF_UNIX).bind(b'\\0r1kit-hygiene')):
            try:
                act()
                print('reached')
            except OSError:
                print('blocked')
        for path in ('/tmp/r1kit-hygiene', '/dev/shm/r1kit-hygiene'):  # bwrap: a private /dev/shm
            try:
                open(path, 'w').write('x')
            except OSError:
                pass
    """)
    try:
        res = sb.run_cases(program, stdio("blocked\n" * 3))
        assert res.pass_fraction == 1.0, res.outcomes
        assert other.poll() is None
        assert not Path("/tmp/r1kit-hygiene").exists() and not Path("/dev/shm/r1kit-hygiene").exists()
    finally:
        other.kill()
        other.wait()
    assert_slot_as_new(sb)


# -- the suite-wide leak check ---------------------------------------------------------------------------------
def test_leftovers_names_what_an_unclosed_sandbox_holds():
    sb = Sandbox(slots=1, uid_base=UID + 80, candidates=["process"], limits=LIMITS)
    (slot,) = sb.slots

    def mine() -> list[str]:
        return [x for x in runner_mod.leftovers() if str(sb._root) in x or f"uid{slot.uid}" in x.replace(" ", "")]

    try:
        open_now = mine()
        assert any("claim still held" in x for x in open_now) and any("folder" in x for x in open_now)
        assert any("mount" in x for x in open_now) == slot.tmpfs
        assert any("cgroup" in x for x in open_now) == (slot.cgroup is not None)
    finally:
        sb.close()
    deadline = time.monotonic() + 5
    while mine() and time.monotonic() < deadline:  # a lazily unmounted tmpfs may linger for a moment
        time.sleep(0.05)
    assert mine() == []
