"""The sandbox pool: slots (one uid, work dir and cgroup each), tier selection at start-up, and one guarded run.

A run starts the harness in the chosen tier, sends it the program and the cases *without* expected values,
reads framed results from a dedicated pipe, and judges each frame here as it arrives (so the binary reward can
stop at the first failure). The process exit status and everything the program prints are never evidence of a
pass. After every run all processes of the slot are killed and checked gone, and the work dir is emptied.
"""

from __future__ import annotations

import logging
import marshal
import os
import queue
import secrets
import select
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from core.cores import cores_per_process
from rewards.code import confine
from rewards.code.cases import Case
from rewards.code.cgroups import SlotCgroup, remove_tree_contents
from rewards.code.claims import claim_uids, kill_uid, uid_pids
from rewards.code.protocol import TEXT_LIMIT, CodeResult, FrameReader, Limits, Outcome, judge
from rewards.code.tiers import TIERS, Launch, Tier, ordered_tiers, sandbox_python

log = logging.getLogger(__name__)

_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
_PROBE_PROGRAMS = {  # read "1 2", print "3"
    "python": "print(sum(map(int, input().split())))",
    "cpp": '#include <cstdio>\nint main(){int a,b;std::scanf("%d %d",&a,&b);std::printf("%d\\n",a+b);}\n',
}
_NO_CXX = "`g++` not installed (apt-get install -y g++)"
__all__ = ["CodeResult", "Limits", "Outcome", "Sandbox", "SandboxUnavailableError", "kill_uid", "uid_pids"]


class SandboxUnavailableError(RuntimeError):
    """No isolation tier works here (or the one asked for does not); the message lists why each failed."""


@dataclass
class Slot:
    index: int
    uid: int
    workdir: Path
    tmpfs: bool
    cgroup: SlotCgroup | None


class Sandbox:
    """A pool of slots sized to the cores, with the tier chosen once by trying each for real."""

    def __init__(
        self,
        slots: int | None = None,
        *,
        uid_base: int = 60000,
        backend: str | None = None,
        allow_weak: bool = False,
        limits: Limits | None = None,
        candidates: Sequence[str] | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.python = sandbox_python()
        self.cxx = shutil.which("g++")
        self.setpriv = shutil.which("setpriv") if os.geteuid() == 0 else None
        self.landlock_abi = confine.landlock_abi()
        self._root = Path(tempfile.mkdtemp(prefix="r1kit-sandbox-"))
        os.chmod(self._root, 0o755)
        self.lib_dir = self._install_harness()
        n = slots or cores_per_process()
        # As root each slot runs as its own uid, claimed for this sandbox's lifetime (rewards.code.claims).
        self._claims = claim_uids(n, uid_base) if os.geteuid() == 0 else []
        self._closed = False
        uids = [c.uid for c in self._claims] or [uid_base + i for i in range(n)]
        self.slots = [self._make_slot(i, uid) for i, uid in enumerate(uids)]
        self._free: queue.Queue[Slot] = queue.Queue()
        for s in self.slots:
            self._free.put(s)
        self._probed: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="r1kit-sandbox")
        try:
            self.tier = self._choose(backend, allow_weak, candidates)
        except SandboxUnavailableError:
            self.close()  # undo mounts and cgroups before failing
            raise
        if self.landlock_abi == 0 and self.tier.name in ("unshare", "process"):
            log.warning(
                "code sandbox: Landlock unavailable; tier %s limits file access by uid permissions only",
                self.tier.name,
            )
        log.info(
            "code sandbox: tier %s, %d slots, landlock ABI %d, cgroup %s, tmpfs %s",
            self.tier.name,
            n,
            self.landlock_abi,
            self.slots[0].cgroup is not None,
            self.slots[0].tmpfs,
        )

    # -- set-up ---------------------------------------------------------------------------------------------
    def _install_harness(self) -> str:
        # A root-owned, world-readable copy: the repo may live where a slot uid cannot read it.
        lib = self._root / "lib"
        lib.mkdir(mode=0o755)
        for name in ("harness.py", "confine.py"):
            shutil.copy(Path(__file__).with_name(name), lib / name)
            os.chmod(lib / name, 0o644)
        # Bytecode compiled by the sandbox interpreter itself, so each run skips compiling the harness.
        subprocess.run([self.python, "-I", "-m", "compileall", "-q", str(lib)], check=True)
        for pyc in (lib / "__pycache__").iterdir():
            os.chmod(pyc, 0o644)
        os.chmod(lib / "__pycache__", 0o755)
        return str(lib)

    def _make_slot(self, index: int, uid: int) -> Slot:
        root = os.geteuid() == 0
        workdir = self._root / f"slot{index}"
        claim = self._claims[index] if self._claims else None
        if claim is not None:  # recorded first: a kill from here on still gets cleaned by the uid's next claimant
            claim.record(workdir, [])
        workdir.mkdir(mode=0o700)
        tmpfs = False
        if root:
            opts = f"size={self.limits.tmpfs_mb}m,mode=0700,uid={uid},gid={uid},nosuid,nodev"
            tmpfs = (
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(workdir)], capture_output=True
                ).returncode
                == 0
            )
            os.chown(workdir, uid, uid)
        cgroup = SlotCgroup.create(f"r1kit-{os.getpid()}-uid{uid}", uid) if root else None
        if claim is not None and cgroup is not None:
            claim.record(workdir, sorted({cgroup.pids_dir, cgroup.memory_dir} - {None}))
        return Slot(index, uid, workdir, tmpfs, cgroup)

    def _choose(self, backend: str | None, allow_weak: bool, candidates: Sequence[str] | None) -> Tier:
        if backend is not None:
            return self._require(TIERS.get(backend))
        reasons = []
        for tier in ordered_tiers():
            if candidates is not None and tier.name not in candidates:
                continue
            if tier.weak and not allow_weak:
                reasons.append(f"{tier.name}: weakest tier, needs allow_weak=True")
                continue
            why = self.probe(tier)
            if why is None:
                return tier
            log.warning("code sandbox: tier %s unavailable: %s", tier.name, why)
            reasons.append(f"{tier.name}: {why}")
        raise SandboxUnavailableError("no sandbox tier works here:\n  " + "\n  ".join(reasons))

    def _require(self, tier: Tier) -> Tier:
        why = self.probe(tier)
        if why is not None:
            raise SandboxUnavailableError(f"sandbox tier {tier.name} does not work here: {why}")
        return tier

    def probe(self, tier: Tier, language: str = "python") -> str | None:
        """Run a real program in ``language`` through ``tier``; None when it works, else the reason (cached). A
        C++ toolchain broken by the sandbox must fail loudly, not score every program 0 as a compile error."""
        key = tier.name if language == "python" else f"{tier.name}+{language}"
        if language != "python" and (why := self.probe(tier)) is not None:
            return why  # the tier itself does not work
        with self._lock:
            if key not in self._probed:
                if language == "python":
                    why = tier.requires()
                else:
                    why = None if self.cxx else _NO_CXX
                if why is None:
                    try:
                        res = self.run_cases(
                            _PROBE_PROGRAMS[language],
                            [Case("stdio", input="1 2\n", expected="3\n")],
                            tier=tier,
                            language=language,
                            probing=True,
                        )
                        why = None if res.pass_fraction == 1.0 else f"probe program did not pass: {res.outcomes}"
                    except (OSError, RuntimeError, ValueError) as e:
                        why = f"{type(e).__name__}: {e}"
                self._probed[key] = why
            return self._probed[key]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.pool.shutdown(wait=True)
        for s in self.slots:
            try:
                self._kill_slot(s)
            finally:  # never leave mounts or cgroups behind, even when a kill failed
                if s.cgroup is not None:
                    s.cgroup.remove()
                if s.tmpfs:
                    subprocess.run(["umount", "--lazy", str(s.workdir)], capture_output=True)
        shutil.rmtree(self._root, ignore_errors=True)
        for c in self._claims:  # the uids are free again, with nothing left to clean
            c.release()

    # -- one run --------------------------------------------------------------------------------------------
    def run_cases(
        self,
        program: str,
        cases: list[Case],
        *,
        tier: Tier | None = None,
        limits: Limits | None = None,
        stop_on_fail: bool = False,
        float_tol: float | None = None,
        language: str = "python",
        probing: bool = False,
    ) -> CodeResult:
        """Judge ``program`` (``language``: ``python`` or ``cpp``) on ``cases`` in one slot. Cases run batched in
        one process; after a crash or a timeout the remaining cases continue in a fresh process, so one bad case
        costs only itself. C++ programs are compiled once per process and judged on stdio cases only."""
        tier = tier or self.tier
        if language not in ("python", "cpp"):
            raise ValueError(f"language: expected 'python' or 'cpp', got {language!r}")
        if not probing and tier is not self.tier:
            self._require(tier)
        if language == "cpp" and not probing:
            why = self.probe(tier, "cpp")
            if why is not None:
                raise SandboxUnavailableError(f"C++ programs cannot run in sandbox tier {tier.name}: {why}")
            if any(c.kind != "stdio" for c in cases):
                err = "C++ programs are judged on stdio tests only (function/asserts tests need a Python program)"
                return CodeResult(0.0, tier.name, [Outcome("error", error=err)] * len(cases))
        limits = limits or self.limits
        slot = self._free.get()
        try:
            outcomes: list[Outcome] = []
            while len(outcomes) < len(cases):
                outcomes += self._one_process(
                    slot, tier, limits, program, cases, len(outcomes), stop_on_fail, float_tol, language
                )
                if stop_on_fail and outcomes and outcomes[-1].status != "passed":
                    outcomes += [Outcome("skipped")] * (len(cases) - len(outcomes))
        finally:
            self._free.put(slot)
        passed = sum(o.status == "passed" for o in outcomes)
        return CodeResult(passed / len(cases) if cases else 0.0, tier.name, outcomes)

    def _harness_cmd(self, lib_view: str) -> list[str]:
        # -I: no env vars, no user site, no cwd on sys.path; -S: no site-packages (stdlib only, ~5 ms faster).
        boot = f"import sys; sys.path.insert(0, {lib_view!r}); import harness; del sys.path[0]; harness.main()"
        return [self.python, "-I", "-S", "-B", "-c", boot]

    def _one_process(
        self,
        slot: Slot,
        tier: Tier,
        limits: Limits,
        program: str,
        cases: list[Case],
        start: int,
        stop_on_fail: bool,
        float_tol: float | None,
        language: str = "python",
    ) -> list[Outcome]:
        todo = cases[start:]
        cg_files = slot.cgroup.procs_files if slot.cgroup is not None and tier.name != "rlimits" else []
        launch: Launch = tier.launch(
            self.python, self.lib_dir, str(slot.workdir), cg_files, limits.tmpfs_mb << 20, self._harness_cmd
        )
        nonce = secrets.token_hex(16)
        rfd, wfd = os.pipe()
        cfg = {
            "nonce": nonce,
            "result_fd": wfd,
            "program": program,
            "cases": [c.to_sandbox() for c in todo],
            "output_limit": limits.output_kb << 10,
            "cgroup_procs": launch.cgroup_view,
            "rlimits": limits.rlimits(len(todo), language),
            "language": language,
            "cxx": self.cxx,
            "cxx_flags": ["-std=c++17", "-O2", "-pipe"],
            "compile_timeout_s": limits.compile_timeout_s,
            "timeout_s": limits.timeout_s,
            "run_rlimits": limits.run_rlimits(),
            "seccomp": True,
            "landlock": {"ro": launch.landlock_ro, "rw": launch.landlock_rw} if self.landlock_abi else None,
        }
        if slot.cgroup is not None:
            slot.cgroup.set_limits(limits.nproc + 4, 2 * (limits.memory_mb << 20) + (limits.tmpfs_mb << 21))
        oom_before = slot.cgroup.oom_kills() if slot.cgroup is not None else 0
        argv, ids = launch.argv, {}
        if launch.drop_uid and self.setpriv:
            # setpriv drops real/effective/saved uid+gid and groups before exec. Passing user= to Popen instead
            # would make CPython fork rather than vfork, copying the page tables of a many-GB trainer per run.
            argv = [self.setpriv, f"--reuid={slot.uid}", f"--regid={slot.uid}", "--clear-groups", "--", *argv]
        elif launch.drop_uid:
            ids = {"user": slot.uid, "group": slot.uid, "extra_groups": []}
        env = {**_ENV, "HOME": launch.work_view, "TMPDIR": launch.work_view}
        try:
            proc = subprocess.Popen(
                argv,
                cwd=launch.cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(wfd,),
                start_new_session=True,
                umask=0o077,
                **ids,
            )
        finally:
            os.close(wfd)
        got: list[Outcome] = []
        try:
            got, ended, err = self._drive(proc, rfd, cfg, todo, limits, nonce, stop_on_fail, float_tol)
        finally:
            os.close(rfd)
            self._kill_slot(slot, proc, grace_s=0.05 if len(got) == len(todo) else 0.0, sweep_uid=tier.helpers)
        if len(got) < len(todo) and not (stop_on_fail and got and got[-1].status != "passed"):
            oom = slot.cgroup is not None and slot.cgroup.oom_kills() > oom_before
            got.append(self._crash_outcome(proc, ended, err, oom))
        return got

    def _drive(self, proc, rfd, cfg, todo, limits, nonce, stop_on_fail, float_tol):
        """Feed the config, then read frames until every case reported, the process ended, or a deadline."""
        try:
            proc.stdin.write(marshal.dumps(cfg))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the harness died before reading: reported below as a failed start
        reader = FrameReader(nonce, limit=len(todo) * 3 * (limits.output_kb << 10) + (1 << 20))
        sel = selectors.DefaultSelector()
        pidfd = os.pidfd_open(proc.pid)
        sel.register(rfd, selectors.EVENT_READ, "result")
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        err = bytearray()
        got: list[Outcome] = []
        ready = False
        deadline = time.monotonic() + 10.0 + limits.timeout_s  # start-up is trusted code; be generous under load
        # Python: the program runs inside the harness, so the per-case deadline is ours to enforce. C++: the
        # harness times each case itself (and reports it); our deadline only catches a harness that hangs.
        compiled = cfg["language"] != "cpp"
        per_case = limits.timeout_s if compiled else limits.timeout_s + 2.0
        ended = "timeout"
        try:
            while len(got) < len(todo):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if not ready:
                        raise RuntimeError(f"harness did not start: {bytes(err[:2000]).decode(errors='replace')}")
                    break
                events = sel.select(remaining)
                for key, _ in events:
                    if key.data == "exit":
                        sel.unregister(pidfd)  # stays readable forever once the process is gone
                        ended = "exit"
                        continue
                    data = os.read(key.fd, 1 << 16)
                    if key.data == "stderr":
                        if not data or len(err) > 64 << 10:
                            sel.unregister(key.fd)  # stop reading a flood; the writer blocks or gets EPIPE
                        err += data[: (64 << 10) - len(err)]
                        continue
                    if not data:
                        sel.unregister(rfd)
                        ended = "exit"
                        continue
                    try:
                        frames = reader.feed(data)
                    except ValueError as e:
                        ended = f"protocol violation: {e}"
                        return got, ended, err
                    for index, payload in frames:
                        if index == -1 and not ready:
                            self._check_ready(payload)
                            ready = True
                            deadline = time.monotonic() + (per_case if compiled else limits.compile_timeout_s + 5)
                            continue
                        if index == -2 and ready and not compiled:
                            compiled = True
                        elif ready and compiled and index == len(got) < len(todo):
                            got.append(judge(todo[index], payload, float_tol))
                            if stop_on_fail and got[-1].status != "passed":
                                return got, ended, err
                        else:
                            return got, "protocol violation: frame out of order", err
                        deadline = time.monotonic() + per_case
                if ended != "timeout" and not sel.select(0):
                    break
        finally:
            sel.close()
            os.close(pidfd)
        if not ready:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"harness failed before confinement was confirmed (exit {proc.returncode}): "
                f"{bytes(err[-2000:]).decode(errors='replace')}"
            )
        return got, ended, err

    def _check_ready(self, report: dict) -> None:
        # Never degrade silently: what was asked for must have been applied.
        if not report.get("seccomp"):
            raise RuntimeError("harness did not confirm its seccomp filter")
        if self.landlock_abi and report.get("landlock") != self.landlock_abi:
            raise RuntimeError(f"harness applied landlock ABI {report.get('landlock')}, expected {self.landlock_abi}")

    @staticmethod
    def _crash_outcome(proc, ended: str, err: bytearray, oom: bool) -> Outcome:
        stderr = bytes(err[-TEXT_LIMIT:]).decode(errors="replace")
        rc = proc.returncode
        if oom:
            return Outcome("memory", stderr=stderr, error="killed by the memory limit")
        if ended == "timeout":
            return Outcome("timeout", stderr=stderr, error="wall-clock timeout")
        if rc == -signal.SIGXCPU or rc == 128 + signal.SIGXCPU:
            return Outcome("timeout", stderr=stderr, error="CPU time limit")
        return Outcome("error", stderr=stderr, error=f"{ended}: process ended before reporting (exit status {rc})")

    def _kill_slot(
        self, slot: Slot, proc: subprocess.Popen | None = None, grace_s: float = 0.0, sweep_uid: bool = True
    ) -> None:
        """Kill every process of the slot, then reap and empty the work dir. With a cgroup, its member list is
        complete (the harness joins before any untrusted code exists, and the namespace tiers' own helpers exit
        with ``proc``); without one, every process of the slot uid is killed (setsid'ed daemons included)."""
        killed = False
        if proc is not None and proc.poll() is None:
            if grace_s and _wait_exit(proc, grace_s):  # a harness that reported everything exits at once
                pass
            else:
                killed = True
                for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
                    try:
                        kill()
                    except ProcessLookupError:
                        pass
        if slot.cgroup is not None and not slot.cgroup.kill_all():
            raise RuntimeError(f"slot {slot.index}: processes survive in its cgroup")
        # Killed namespace tiers leave bwrap/unshare helpers (outside the cgroup) dying asynchronously.
        if os.geteuid() == 0 and (slot.cgroup is None or killed or sweep_uid):
            kill_uid(slot.uid)
        if proc is not None:
            proc.wait()
            proc.stderr.close()
        remove_tree_contents(slot.workdir)
        if os.geteuid() == 0:  # a program may have chmod-ed its work dir (the namespace tiers' is the slot's own)
            os.chmod(slot.workdir, 0o700)
            os.chown(slot.workdir, slot.uid, slot.uid)


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether ``proc`` exits within ``timeout_s`` (a pidfd wakes us at once; Popen.wait(timeout) polls)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)
