"""The sandbox pool: slots (one uid, work dir and cgroup each), tier selection at start-up, and one guarded run.

A run starts the harness in the chosen tier, sends it the program and the cases *without* expected values,
reads framed results from a dedicated pipe, and judges each frame here as it arrives (so the binary reward can
stop at the first failure). The process exit status and everything the program prints are never evidence of a
pass. After every run all processes of the slot are killed and checked gone, and the work dir is emptied.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.cores import cores_per_process
from rewards.code import confine
from rewards.code.cases import Case
from rewards.code.cgroups import SlotCgroup
from rewards.code.claims import (
    claim_uids,
    kill_uid,
    remove_ipc,
    remove_tree,
    uid_pids,
)
from rewards.code.protocol import (
    Budget,
    BudgetClock,
    CodeResult,
    FrameReader,
    Limits,
    Outcome,
    crash_outcome,
    judge_safely,
    send_config,
)
from rewards.code.slots import (
    MADE,
    SandboxUnavailableError,
    Slot,
    SlotPool,
    clean_slot,
    leftovers,
    mount_tmpfs,
)
from rewards.code.tiers import TIERS, Launch, Tier, ordered_tiers, sandbox_python

log = logging.getLogger(__name__)

_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
_PROBE_PROGRAMS = {  # read "1 2", print "3"
    "python": "print(sum(map(int, input().split())))",
    "cpp": '#include <cstdio>\nint main(){int a,b;std::scanf("%d %d",&a,&b);std::printf("%d\\n",a+b);}\n',
}
_NO_CXX = "`g++` not installed (apt-get install -y g++)"
_PROBE_RETRY_S = 30.0  # a failed probe run is believed this long, then tried again
__all__ = [
    "CodeResult",
    "Limits",
    "Outcome",
    "Sandbox",
    "SandboxUnavailableError",
    "kill_uid",
    "leftovers",
    "uid_pids",
]


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
        MADE.append((self._root, tuple(s.uid for s in self.slots)))
        self._free: queue.Queue[Slot] = SlotPool(self.slots)
        self._probed: dict[str, str | None] = {}
        self._probe_failed_at: dict[str, float] = {}
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
            tmpfs = mount_tmpfs(workdir, uid, self.limits.tmpfs_mb)
            os.chown(workdir, uid, uid)
        cgroup = SlotCgroup.create(f"r1kit-{os.getpid()}-uid{uid}", uid) if root else None
        if cgroup is not None and self.limits.cpus is not None:
            cgroup.enable_cpu()  # now, not at the first run: the claim record below then lists the cpu folders too
        if claim is not None and cgroup is not None:
            claim.record(workdir, sorted({cgroup.pids_dir, cgroup.memory_dir, *cgroup.cpu_dirs} - {None}))
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
        """Run a real program in ``language`` through ``tier``; None when it works, else the reason. A C++
        toolchain broken by the sandbox must fail loudly, not score every program 0 as a compile error.

        Success and a missing prerequisite are cached for good. A failed probe run is tried once more (on a
        slot cleaned since, or another one) and then cached for ``_PROBE_RETRY_S`` only: a slot a hostile
        program had left dirty must not refuse every later C++ program."""
        key = tier.name if language == "python" else f"{tier.name}+{language}"
        if language != "python" and (why := self.probe(tier)) is not None:
            return why  # the tier itself does not work
        with self._lock:
            failed_at = self._probe_failed_at.get(key)
            if key in self._probed and (failed_at is None or time.monotonic() - failed_at < _PROBE_RETRY_S):
                return self._probed[key]
            self._probe_failed_at.pop(key, None)
            why = tier.requires() if language == "python" else None if self.cxx else _NO_CXX
            if why is None:
                why = _probe_run(self, tier, language)
                if why is not None:
                    log.warning("code sandbox: %s probe in tier %s failed, retrying: %s", language, tier.name, why)
                    why = _probe_run(self, tier, language)
                if why is not None:
                    self._probe_failed_at[key] = time.monotonic()
            self._probed[key] = why
            return why

    def close(self) -> None:
        """Kill and clean every slot, remove its cgroups, mount and work dir, and free its uid. Never raises: a
        slot that cannot be cleaned is logged and its uid's claim keeps its record, so that the uid's next
        claimant removes what is left."""
        if self._closed:
            return
        self._closed = True
        self.pool.shutdown(wait=True)
        claims = self._claims or [None] * len(self.slots)
        for s, claim in zip(self.slots, claims, strict=True):
            clean = _close_slot(self, s)
            if claim is not None:  # the uid is free again; with nothing left to clean, or with the record
                claim.release() if clean else claim.abandon()
        try:
            remove_tree(self._root)
        except OSError as e:
            log.warning("code sandbox: could not remove %s: %s", self._root, e)

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
        one process; after a crash the remaining cases continue in a fresh process, so one bad case costs only
        itself. ``limits.timeout_s`` is the budget of the whole program (``protocol.Limits``): once it is spent the
        remaining cases are timeouts, unrun, so a looping program costs one budget, not one per case. C++
        programs are compiled once per process and judged on stdio cases only.

        Whatever the program does, this returns its outcomes (a misbehaving program fails); it raises only for
        faults of the sandbox itself (a harness that does not start or confirm its confinement)."""
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
            cg = slot.cgroup if tier.name != "rlimits" else None  # the rlimits tier joins no cgroup
            budget = Budget.of(limits, metered=cg is not None and cg.enable_cpu())
            outcomes: list[Outcome] = []
            while len(outcomes) < len(cases):
                if (why := budget.spent()) is not None:
                    outcomes += [Outcome("timeout", error=f"not run: {why}")] * (len(cases) - len(outcomes))
                    break
                outcomes += self._one_process(
                    slot, tier, limits, program, cases, len(outcomes), stop_on_fail, float_tol, language, budget
                )
                if outcomes and outcomes[-1].error.startswith("protocol violation") and len(outcomes) < len(cases):
                    # a program caught forging frames gets no fresh process per remaining case
                    rest = Outcome("error", error="not run: the program violated the result protocol")
                    outcomes += [rest] * (len(cases) - len(outcomes))
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
        language: str,
        budget: Budget,
    ) -> list[Outcome]:
        todo = cases[start:]
        if slot.cgroup is not None:
            cpus = limits.cpus if budget.metered else None
            slot.cgroup.set_limits(limits.nproc + 4, 2 * (limits.memory_mb << 20) + (limits.tmpfs_mb << 21), cpus)
        cg = slot.cgroup if slot.cgroup is not None and tier.name != "rlimits" else None
        cg_files = cg.procs_files + cg.cpu_procs_files if cg is not None else []
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
            "rlimits": limits.rlimits(language),
            "language": language,
            "cxx": self.cxx,
            "cxx_flags": ["-std=c++17", "-O2", "-pipe"],
            "compile_timeout_s": limits.compile_timeout_s,
            "timeout_s": budget.wall_s - budget.wall_used,  # C++: the harness times the cases itself
            "run_rlimits": limits.run_rlimits(),
            "seccomp": True,
            "landlock": {"ro": launch.landlock_ro, "rw": launch.landlock_rw} if self.landlock_abi else None,
        }
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
        meter = cg.cpu_usage_s if cg is not None and budget.metered else None
        ended = ""
        try:
            got, ended, err = self._drive(proc, rfd, cfg, todo, limits, nonce, stop_on_fail, float_tol, budget, meter)
        finally:
            os.close(rfd)
            exits = len(got) == len(todo) or ended == "restart"  # a harness that is done exits at once
            self._kill_slot(slot, proc, grace_s=0.05 if exits else 0.0, sweep_uid=tier.helpers)
        if len(got) < len(todo) and ended != "restart" and not (stop_on_fail and got and got[-1].status != "passed"):
            oom = slot.cgroup is not None and slot.cgroup.oom_kills() > oom_before
            got.append(self._crash_outcome(proc, ended, err, oom))
        return got

    def _drive(self, proc, rfd, cfg, todo, limits, nonce, stop_on_fail, float_tol, budget, meter):
        """Feed the config (then, for the judge only, the check cases' test code), and read frames until every
        case reported, the process ended, or the program's budget is spent (its clock runs from the ready frame;
        C++: from the compiled frame, and the harness times the cases itself, so ours gets slack). Anything a
        frame holds is the program's doing: a malformed one ends the run as a protocol violation."""
        judged = [c.to_judge() for c in todo] if any(c.kind == "check" for c in todo) else None
        send_config(proc.stdin, cfg, judged)
        reader = FrameReader(nonce, limits.frame_limit())
        sel = selectors.DefaultSelector()
        pidfd = os.pidfd_open(proc.pid)
        sel.register(rfd, selectors.EVENT_READ, "result")
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        err = bytearray()
        got: list[Outcome] = []
        ready, compiled = False, cfg["language"] != "cpp"
        clock = BudgetClock(budget, meter, limits.cpus, slack=0.0 if compiled else 2.0)
        deadline = time.monotonic() + 10.0 + limits.timeout_s  # start-up is trusted code; be generous under load
        ended = "timeout"
        try:
            while len(got) < len(todo):
                wait, spent = clock.left() if clock.t0 is not None else (deadline - time.monotonic(), None)
                if spent is not None or wait <= 0:
                    if not ready:
                        raise RuntimeError(f"harness did not start: {bytes(err[:2000]).decode(errors='replace')}")
                    ended = f"timeout: {spent or 'compile did not end'}"
                    break
                for key, _ in sel.select(wait):
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
                        return got, f"protocol violation: {e}", err
                    for index, payload in frames:
                        if index == -1 and not ready:
                            self._check_ready(payload)
                            ready = True
                            if compiled:
                                clock.start()
                            deadline = time.monotonic() + limits.compile_timeout_s + 5
                        elif index == -2 and ready and not compiled:
                            compiled = True
                            clock.start()
                        elif index == -3 and ready and compiled and judged is not None:
                            return got, "restart", err  # the judge lost the program's process: a fresh sandbox
                        elif ready and compiled and index == len(got) < len(todo):
                            got.append(judge_safely(todo[index], payload, float_tol))
                            if stop_on_fail and got[-1].status != "passed":
                                return got, ended, err
                        else:
                            return got, "protocol violation: frame out of order", err
                if ended != "timeout" and not sel.select(0):
                    break
        finally:
            sel.close()
            os.close(pidfd)
            clock.stop()
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
        return crash_outcome(proc.returncode, ended, bytes(err), oom)

    def _kill_slot(
        self, slot: Slot, proc: subprocess.Popen | None = None, grace_s: float = 0.0, sweep_uid: bool = True
    ) -> bool:
        """Make the slot as good as before the run (``clean_slot``). A failed clean-up is tried once more,
        sweeping the whole uid; if that fails too, the slot is retired: logged as an error and never handed out
        again (``SlotPool``), since a later program would run in what this one left. Returns whether the slot
        is clean. ``sweep_uid`` is ``tier.helpers``: the tiers with launcher helpers (bwrap, unshare) are also
        the ones with an IPC namespace, whose objects die with it; the others get the IPC clean-up. Never
        raises: the run that left the mess is still judged (and a failure is no reward)."""
        error: Exception | None = None
        for attempt in range(2):
            try:
                grace = grace_s if attempt == 0 else 0.0
                clean_slot(slot, proc, grace, sweep_uid or attempt > 0, not sweep_uid, self.limits)
                return True
            except (OSError, RuntimeError) as e:
                error = e
                log.warning("code sandbox: slot %d (uid %d): clean-up failed: %s", slot.index, slot.uid, e)
        slot.retired = f"{type(error).__name__}: {error}"
        log.error(
            "code sandbox: slot %d (uid %d) taken out of service, its clean-up failed twice: %s",
            slot.index,
            slot.uid,
            slot.retired,
        )
        return False


def _probe_run(sandbox: Sandbox, tier: Tier, language: str) -> str | None:
    """Run the probe program once; None when it passes, else why not."""
    try:
        res = sandbox.run_cases(
            _PROBE_PROGRAMS[language],
            [Case("stdio", input="1 2\n", expected="3\n")],
            tier=tier,
            language=language,
            probing=True,
        )
    except (OSError, RuntimeError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None if res.pass_fraction == 1.0 else f"probe program did not pass: {res.outcomes}"


def _close_slot(sandbox: Sandbox, slot: Slot) -> bool:
    """Clean ``slot`` for the last time and remove its cgroups and mount; returns whether nothing is left."""
    clean = sandbox._kill_slot(slot)
    if os.geteuid() == 0:
        try:
            kill_uid(slot.uid)  # the last time: waits for init to reap the zombies each run left it too
        except RuntimeError as e:
            log.error("code sandbox: slot %d: processes of uid %d remain: %s", slot.index, slot.uid, e)
            clean = False
        try:
            remove_ipc({slot.uid})
        except OSError as e:
            log.error("code sandbox: slot %d: IPC objects of uid %d remain: %s", slot.index, slot.uid, e)
            clean = False
    if slot.cgroup is not None:
        slot.cgroup.remove()
        slot.cgroup.remove_cpu()
        clean &= not any(d.exists() for d in {slot.cgroup.pids_dir, slot.cgroup.memory_dir} - {None})
    if slot.tmpfs:
        subprocess.run(["umount", "--lazy", str(slot.workdir)], capture_output=True)
        clean &= not os.path.ismount(slot.workdir)
    return clean
