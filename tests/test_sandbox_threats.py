"""Threat tests: hostile programs against every sandbox tier available here (the chosen one and, forced, the
fallbacks). Each must end with the runner alive, score 0, no process of any slot uid left, nothing outside the
work dir touched and nothing secret in the returned outcomes. Limits are tight so that bombs stay small on a
2-core test machine: 1.5 s per case, 256 MB per process, 32 processes per slot.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from rewards.code import Limits, get_sandbox, parse_tests, run
from rewards.code.runner import uid_pids
from rewards.code.tiers import TIERS

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs each slot as its own uid: needs root"),
]

SECRET = "R1KIT-TEST-SECRET-" + os.urandom(8).hex()
os.environ["HF_TOKEN"] = SECRET  # the runner's own environment holds a token; no program may see it
RUNNER_PID = os.getpid()
LIMITS = Limits(timeout_s=1.5, memory_mb=256, nproc=32, file_mb=16, tmpfs_mb=64, output_kb=64)

# One case: f(1) == 2. Every hostile program below is wrong or never answers, so must score 0.
F1 = {"function": {"name": "f", "cases": [{"args": [1], "expected": 2}]}}
F2 = {"function": {"name": "f", "cases": [{"args": [1], "expected": 2}, {"args": [5], "expected": 6}]}}
S1 = {"stdio": [{"input": "1\n", "output": "2\n"}]}


@pytest.fixture(scope="module")
def outside():
    """A world-writable folder outside any work dir (so only the sandbox, not uid permissions, protects it),
    holding a sentinel, a world-readable file, a root-only secret and a copy of the tests."""
    d = Path(tempfile.mkdtemp(prefix="r1kit-outside-"))
    os.chmod(d, 0o777)
    (d / "sentinel").write_text("untouched")
    os.chmod(d / "sentinel", 0o666)
    (d / "public.txt").write_text(f"public {SECRET}")
    os.chmod(d / "public.txt", 0o644)
    (d / "secret.txt").write_text(SECRET)
    os.chmod(d / "secret.txt", 0o600)
    (d / "tests.json").write_text(json.dumps(F1))
    os.chmod(d / "tests.json", 0o644)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.fixture(scope="module")
def listeners():
    """Listeners on loopback IPv4 and IPv6: nothing from the sandbox may reach them."""
    socks = []
    s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s4.bind(("127.0.0.1", 0))
    socks.append(s4)
    try:
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s6.bind(("::1", 0))
        socks.append(s6)
    except OSError:  # no IPv6 on this host
        pass
    for s in socks:
        s.listen(16)
        s.setblocking(False)
    yield socks
    for s in socks:
        s.close()


def _snapshot(d: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (stat.S_IMODE(p.lstat().st_mode), p.read_bytes()) for p in sorted(d.iterdir())}


def _slot_files(root: str) -> list[str]:
    uids = {s.uid for s in get_sandbox().slots}
    return [e.path for e in os.scandir(root) if e.stat(follow_symlinks=False).st_uid in uids]


def _accepted(socks) -> int:
    n = 0
    for s in socks:
        try:
            conn, _ = s.accept()
            conn.close()
            n += 1
        except BlockingIOError:
            pass
    return n


def threat_programs(outside: Path, ports: list[int]) -> dict[str, tuple[str, dict]]:
    o = str(outside)
    connect = "\n".join(
        f"try:\n    socket.create_connection(({host!r}, {port}), timeout=0.5).sendall(b'hi')\n"
        f"except OSError as e:\n    print('blocked', e)"
        for host, port in zip(["127.0.0.1", "::1"], ports, strict=False)
    )
    return {
        # -- time ------------------------------------------------------------------------------------------
        "infinite_loop": ("while True:\n    pass\n", F1),
        "signal_ignoring_loop": (
            "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGXCPU):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
            F1,
        ),
        "sleep_in_function": ("import time\ndef f(x):\n    time.sleep(1000)\n", F1),
        # -- escaping the process tree -------------------------------------------------------------------
        "detached_child": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\ndef f(x):\n    return 0\n",
            F1,
        ),
        "daemonised_double_fork": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        os.closerange(0, 1024)\n        time.sleep(1000)\n    os._exit(0)\nos._exit(0)\n",
            F1,
        ),
        "popen_new_session": (
            "import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
            "def f(x):\n    return 0\n",
            F1,
        ),
        # -- resource bombs ------------------------------------------------------------------------------
        "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", F1),
        "thread_bomb": (
            "import threading, time\nwhile True:\n"
            "    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()\n",
            F1,
        ),
        "memory_bomb_one": ("x = []\nwhile True:\n    x.append(b'x' * (1 << 24))\n", F1),
        "memory_bomb_many": (
            "import os, time\nfor _ in range(12):\n    if os.fork() == 0:\n        x = b'x' * (200 << 20)\n"
            "        time.sleep(1000)\ntime.sleep(1000)\n",
            F1,
        ),
        "stdout_flood": ("while True:\n    print('x' * 10000)\n", S1),
        "stderr_flood": ("import sys\nwhile True:\n    sys.stderr.write('x' * 10000)\n", S1),
        "raw_fd_flood": ("import os\nwhile True:\n    os.write(1, b'x' * 65536)\n    os.write(2, b'y' * 65536)\n", S1),
        "disk_one_huge_file": (
            "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n",
            F1,
        ),
        "disk_many_files": (
            "i = 0\nwhile True:\n    with open(f'f{i}', 'wb') as f:\n        f.write(b'x' * (1 << 20))\n    i += 1\n",
            F1,
        ),
        "disk_dev_shm": (
            "i = 0\nwhile True:\n    with open(f'/dev/shm/r1kit-flood-{i}', 'wb') as f:\n"
            "        f.write(b'x' * (1 << 20))\n    i += 1\n",
            F1,
        ),
        "disk_tmp": ("open('/tmp/r1kit-flood', 'wb').write(b'x' * (1 << 20))\n", F1),
        # -- secrets ---------------------------------------------------------------------------------------
        "read_root_only_file": (f"def f(x):\n    return open({o + '/secret.txt'!r}).read()\n", F1),
        "read_outside_file": (f"print(open({o + '/public.txt'!r}).read())\n", S1),
        "read_tests_for_answer": (
            f"import json\ndef f(x):\n    return json.load(open({o + '/tests.json'!r}))['function']['cases'][0]"
            "['expected']\n",
            F1,
        ),
        "read_proc_environ": (
            "import os\nout = []\nfor p in os.listdir('/proc'):\n    try:\n"
            "        out.append(open(f'/proc/{p}/environ', 'rb').read().decode(errors='replace'))\n"
            "    except (OSError, ValueError):\n        pass\nprint(out, dict(os.environ))\n",
            S1,
        ),
        "read_root_home": ("import os\nprint(os.listdir('/root'), open('/etc/shadow').read())\n", S1),
        # -- network ---------------------------------------------------------------------------------------
        "loopback_connect": (f"import socket\n{connect}\n", S1),
        # -- other processes -------------------------------------------------------------------------------
        "kill_parent_and_others": (
            f"import os, signal\nfor pid in (os.getppid(), {RUNNER_PID}, 1, -1):\n    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n",
            F1,
        ),
        # -- file system -----------------------------------------------------------------------------------
        "write_delete_outside": (
            f"import os\nfor act in (lambda: open({o + '/pwned'!r}, 'w').write('x'), "
            f"lambda: os.remove({o + '/sentinel'!r}), lambda: open({o + '/sentinel'!r}, 'w').write('pwned'), "
            f"lambda: os.chmod({o!r}, 0)):\n    try:\n        act()\n    except OSError:\n        pass\n",
            F1,
        ),
        "symlink_escape": (
            f"import os\nos.symlink({o!r}, 'esc')\nos.symlink({o + '/sentinel'!r}, 'victim')\n"
            "os.symlink('/', 'root')\nos.makedirs('deep/er')\nos.symlink('../..', 'deep/er/up')\n"
            "for act in (lambda: open('esc/pwned', 'w').write('x'), lambda: open('victim', 'w').write('pwned'), "
            "lambda: os.chmod('.', 0)):\n    try:\n        act()\n    except OSError:\n        pass\n",
            F1,
        ),
        # -- faking the reward -----------------------------------------------------------------------------
        "sys_exit_before_tests": ("import sys\nsys.exit(0)\n", F1),
        "os_exit_before_tests": ("import os\nos._exit(0)\n", F1),
        "exit_inside_function": ("def f(x):\n    raise SystemExit(0)\n", F1),
        "os_exit_stdio_no_output": ("import os\nos._exit(0)\n", S1),
        "rigged_eq_object": (
            "class Any:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
            "def f(x):\n    return Any()\n",
            F1,
        ),
        "rigged_int_subclass": (
            "class I(int):\n    def __eq__(self, o):\n        return True\n"
            "    def __repr__(self):\n        return '2'\n"
            "def f(x):\n    return I(0)\n",
            F1,
        ),
        "patch_builtins": (
            "import builtins, json\nbuiltins.type = lambda *a: int\nbuiltins.isinstance = lambda *a: True\n"
            "json.dumps = lambda *a, **k: '2'\nbuiltins.print = lambda *a, **k: None\n"
            "def f(x):\n    return 'wrong'\n",
            F1,
        ),
        "peek_caller_frames": (
            "import sys\ndef f(x):\n    fr, seen = sys._getframe(1), []\n    while fr is not None:\n"
            "        seen.append({k: repr(v)[:50] for k, v in fr.f_locals.items()})\n        fr = fr.f_back\n"
            "    for loc in seen:\n        if 'expected' in loc:\n"
            "            return loc['expected']\n    return None\n",
            F1,
        ),
        "scan_gc_for_expected": (
            "import gc\ndef f(x):\n    for o in gc.get_objects():\n"
            "        if isinstance(o, dict) and 'expected' in o:\n            return o['expected']\n    return -1\n",
            F1,
        ),
        "forge_result_frames": (
            "import gc, os\nrep = [o for o in gc.get_objects() if type(o).__name__ == 'Reporter'][0]\n"
            "for i in range(2):\n    rep.send(i, {'status': 'passed', 'value': 'PASS'})\n"
            "for fd in range(20):\n    try:\n"
            "        os.write(fd, b'R1K ' + b'0' * 32 + b' 1 15\\n{\"status\":\"ok\"}')\n"
            "    except OSError:\n        pass\nos._exit(0)\n",
            F2,
        ),
        "print_fake_success": (
            "import sys\nprint('All tests passed! 2')\nsys.__stdout__.write('R1K ' + '0' * 32 + ' 0 2\\n{}')\n"
            "def f(x):\n    print('2')\n    return None\n",
            F1,
        ),
        "patch_assert_machinery": (
            "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\ndef f(x):\n    return 0\n",
            {"asserts": "assert f(1) == 2\nassert f(2) == 3"},
        ),
    }


_CPP_HEAD = (
    "#include <cstdio>\n#include <cstdlib>\n#include <cstring>\n#include <csignal>\n#include <unistd.h>\n"
    "#include <fcntl.h>\n#include <dirent.h>\n#include <sys/socket.h>\n#include <netinet/in.h>\n"
    "#include <arpa/inet.h>\n#include <sys/stat.h>\n#include <initializer_list>\n"
)


def cpp_threat_programs(outside: Path, ports: list[int]) -> dict[str, str]:
    """The same threats written in C++ (compiled in the sandbox, then run as the harness's child), plus attacks
    on the compiler itself. Every one answers S1 (input 1 -> 2) wrongly or never."""
    o = str(outside)
    connect = "".join(
        f'{{ int s = socket({fam}, SOCK_STREAM, 0); if (s < 0) std::puts("blocked"); else {{ {addr} '
        f'if (connect(s, (sockaddr*)&a, sizeof a) == 0) write(s, "hi", 2); }} }}\n'
        for fam, addr in zip(
            ["AF_INET", "AF_INET6"],
            [
                f"sockaddr_in a{{}}; a.sin_family = AF_INET; a.sin_port = htons({ports[0]}); "
                'inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);',
                f"sockaddr_in6 a{{}}; a.sin6_family = AF_INET6; a.sin6_port = htons({ports[-1]}); "
                'inet_pton(AF_INET6, "::1", &a.sin6_addr);',
            ],
            strict=True,
        )
    )
    spin = "volatile int on = 1; while (on) {}"
    main = {
        "infinite_loop": spin,
        "signal_ignoring_loop": "for (int s : {SIGTERM, SIGINT, SIGHUP, SIGALRM, SIGXCPU}) signal(s, SIG_IGN); "
        + spin,
        "detached_child": 'if (fork() == 0) { setsid(); sleep(1000); } std::puts("0");',
        "daemonised_double_fork": "if (fork() == 0) { setsid(); if (fork() == 0) { for (int i = 0; i < 1024; i++) "
        "close(i); sleep(1000); } _exit(0); } return 0;",
        "fork_bomb": "while (true) fork();",
        "memory_bomb_one": "while (true) { char* p = (char*)malloc(1 << 24); if (p) memset(p, 1, 1 << 24); }",
        "memory_bomb_many": "for (int i = 0; i < 12; i++) if (fork() == 0) { char* p = (char*)malloc(200 << 20); "
        "if (p) memset(p, 1, 200 << 20); sleep(1000); } sleep(1000);",
        "stdout_flood": "static char b[10000]; memset(b, 'x', sizeof b); while (true) fwrite(b, 1, sizeof b, stdout);",
        "stderr_flood": "static char b[10000]; memset(b, 'x', sizeof b); while (true) fwrite(b, 1, sizeof b, stderr);",
        "disk_one_huge_file": 'static char b[1 << 20]; FILE* f = fopen("big", "wb"); '
        "while (f) fwrite(b, 1, sizeof b, f);",
        "disk_many_files": 'static char b[1 << 20]; for (int i = 0;; i++) { char n[32]; snprintf(n, 32, "f%d", i); '
        'FILE* f = fopen(n, "wb"); if (f) { fwrite(b, 1, sizeof b, f); fclose(f); } }',
        "disk_dev_shm": "static char b[1 << 20]; for (int i = 0;; i++) { char n[64]; "
        'snprintf(n, 64, "/dev/shm/r1kit-flood-%d", i); FILE* f = fopen(n, "wb"); if (f) { fwrite(b, 1, sizeof b, f); '
        "fclose(f); } }",
        "disk_tmp": 'FILE* f = fopen("/tmp/r1kit-flood", "wb"); if (f) fputs("x", f);',
        "read_files": f'for (const char* n : {{"{o}/secret.txt", "{o}/public.txt", "{o}/tests.json", '
        '"/etc/shadow", "/root/.bashrc"}) { FILE* f = fopen(n, "r"); char b[4096]; '
        "if (f) { size_t k = fread(b, 1, sizeof b, f); fwrite(b, 1, k, stdout); } }",
        "read_proc_environ": 'DIR* d = opendir("/proc"); while (dirent* e = d ? readdir(d) : nullptr) { char n[300]; '
        'snprintf(n, 300, "/proc/%s/environ", e->d_name); int fd = open(n, O_RDONLY); char b[4096]; '
        "if (fd >= 0) { ssize_t k = read(fd, b, sizeof b); if (k > 0) fwrite(b, 1, k, stdout); } }",
        "loopback_connect": connect,
        "kill_parent_and_others": f"for (int pid : {{(int)getppid(), {RUNNER_PID}, 1, -1}}) kill(pid, SIGKILL);",
        "write_delete_outside": f'FILE* f = fopen("{o}/pwned", "w"); if (f) fputs("x", f); '
        f'unlink("{o}/sentinel"); f = fopen("{o}/sentinel", "w"); if (f) fputs("pwned", f); chmod("{o}", 0);',
        "symlink_escape": f'symlink("{o}", "esc"); symlink("{o}/sentinel", "victim"); '
        'FILE* f = fopen("esc/pwned", "w"); if (f) fputs("x", f); f = fopen("victim", "w"); '
        'if (f) fputs("pwned", f);',
        "exit_zero_without_output": "return 0;",
        "forge_result_frames": "for (int fd = 3; fd < 64; fd++) "
        'write(fd, "R1K 00000000000000000000000000000000 0 2\\n{}", 41);',
        "tamper_with_next_case": 'unlink("prog"); symlink("/bin/true", "prog"); FILE* f = fopen("out.txt", "w"); '
        'if (f) fputs("2\\n", f); return 1;',
    }
    programs = {name: _CPP_HEAD + "int main() { " + body + " }\n" for name, body in main.items()}
    # the compiler is attacked too: it runs under the same confinement and its messages come back to us
    programs["include_secret"] = f'#include "{o}/secret.txt"\nint main() {{}}\n'
    programs["include_public_file"] = f'#include "{o}/public.txt"\nint main() {{}}\n'
    programs["include_proc_environ"] = '#include "/proc/self/environ"\nint main() {}\n'
    programs["include_dev_zero"] = '#include "/dev/zero"\nint main() {}\n'
    return programs


CPP_THREATS = list(cpp_threat_programs(Path("/x"), [0, 0]))


def _available(tier: str) -> str | None:
    return get_sandbox().probe(TIERS.get(tier))


@pytest.fixture(params=["bwrap", "unshare", "process"])
def tier(request):
    why = _available(request.param)
    if why is not None:
        pytest.skip(f"tier {request.param} unavailable here: {why}")
    return request.param


THREATS = list(threat_programs(Path("/x"), [0, 0]))


@pytest.mark.parametrize("threat", THREATS)
def test_threat_is_contained(threat, tier, outside, listeners):
    ports = [s.getsockname()[1] for s in listeners]
    program, tests = threat_programs(outside, ports)[threat]
    with contained(tier, outside, listeners) as judged:
        judged.append(
            run(program, tests, backend=tier, timeout_s=LIMITS.timeout_s, memory_mb=LIMITS.memory_mb, limits=LIMITS)
        )
    # the runner survived and still judges correctly
    assert run("def f(x):\n    return x + 1\n", F1, backend=tier).pass_fraction == 1.0


@contextlib.contextmanager
def contained(tier: str, outside: Path, listeners):
    """Checks, around the run the block appends to the yielded list, that it scored 0 in ``tier`` and left no
    process, no change outside its work dir, no file in /dev/shm or /tmp, no connection and no secret behind."""
    before = _snapshot(outside)
    shm_before, tmp_before = set(_slot_files("/dev/shm")), set(_slot_files("/tmp"))
    judged: list = []
    yield judged
    (res,) = judged
    assert res.pass_fraction == 0.0, res
    assert res.backend == tier
    for slot in get_sandbox().slots:
        assert uid_pids(slot.uid) == [], f"processes of slot uid {slot.uid} survived"
    assert _snapshot(outside) == before, "something outside the work dir changed"
    assert set(_slot_files("/dev/shm")) == shm_before and set(_slot_files("/tmp")) == tmp_before
    assert _accepted(listeners) == 0, "a sandboxed program reached a loopback listener"
    assert SECRET not in json.dumps([o.__dict__ for o in res.outcomes]), "a secret leaked into the outcomes"


@pytest.mark.parametrize("threat", CPP_THREATS)
def test_cpp_threat_is_contained(threat, tier, outside, listeners):
    ports = [s.getsockname()[1] for s in listeners]
    program = cpp_threat_programs(outside, ports)[threat]
    tests = {"stdio": S1["stdio"] * 2}  # two cases, so that anything a program leaves for the next is exercised
    with contained(tier, outside, listeners) as judged:
        judged.append(run(program, tests, backend=tier, language="cpp", timeout_s=LIMITS.timeout_s, limits=LIMITS))
    if not threat.startswith("include_"):  # the attack itself ran: a compile error would make this test vacuous
        assert not any("compile" in o.error for o in judged[0].outcomes), judged[0].outcomes[0]
    ok = '#include <cstdio>\nint main() { int x; std::scanf("%d", &x); std::printf("%d\\n", x + 1); }\n'
    assert run(ok, S1, backend=tier, language="cpp").pass_fraction == 1.0


def test_strongest_tier_chosen_and_logged():
    sb = get_sandbox()
    order = ["bwrap", "unshare", "process"]
    working = [t for t in order if sb.probe(TIERS.get(t)) is None]
    assert working, "no sandbox tier works on this machine"
    assert sb.tier.name == working[0]


def test_weak_tier_needs_opt_in():
    from rewards.code.runner import Sandbox, SandboxUnavailableError

    with pytest.raises(SandboxUnavailableError, match="rlimits: weakest tier, needs allow_weak"):
        Sandbox(slots=1, uid_base=61000, candidates=["rlimits"])
    sb = Sandbox(slots=1, uid_base=61000, candidates=["rlimits"], allow_weak=True)
    try:
        assert sb.tier.name == "rlimits"
        assert sb.run_cases("print(int(input()) + 1)", parse_tests(S1).cases).pass_fraction == 1.0
    finally:
        sb.close()


def test_work_dir_reset_between_runs(tier):
    """A program that chmod-s or fills its work dir must not break the next run in that slot (the namespace
    tiers' work dir is the slot's own folder, not a fresh mount)."""
    slots = len(get_sandbox().slots)
    for _ in range(slots):  # slots are handed out in turn: every one gets a hostile run
        run("import os\nopen('junk', 'w').write('x')\nos.chmod('.', 0)\n", S1, backend=tier)
    ok = '#include <cstdio>\nint main() { int x; std::scanf("%d", &x); std::printf("%d\\n", x + 1); }\n'
    for _ in range(slots):
        assert run(ok, S1, backend=tier, language="cpp").pass_fraction == 1.0
