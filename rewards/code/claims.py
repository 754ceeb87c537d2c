"""Slot uids, claimed with one lock file per uid, and the clean-up of what a dead runner left behind.

Every sandbox slot runs as its own uid. Two sandboxes sharing a uid (two DDP ranks on one machine, a test run
beside a training run) would share its RLIMIT_NPROC budget and kill each other's programs in their per-uid
sweeps, so each slot uid is claimed with an exclusive ``flock`` held for the sandbox's lifetime. The kernel drops
a flock when its holder dies, however it dies; the lock file records the holder's work dir and cgroups, so the
next sandbox that claims the uid removes what a hard-killed runner left: processes (setsid'ed daemons survive a
SIGKILLed runner in the process tier), the tmpfs mount, the work dir and the cgroups.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def lock_dir() -> Path:
    """``/run/r1kit-sandbox`` (cleared at boot, like the uids' processes), else under the temp dir."""
    for parent in (Path("/run"), Path(tempfile.gettempdir())):
        d = parent / "r1kit-sandbox"
        try:
            d.mkdir(mode=0o700, exist_ok=True)
            return d
        except OSError:
            continue
    raise OSError("no writable folder for the sandbox's uid locks (tried /run and the temp dir)")


@dataclass
class UidClaim:
    uid: int
    fd: int

    def record(self, workdir: Path, cgroup_dirs: list[Path]) -> None:
        """What to clean if this process dies holding the claim."""
        data = json.dumps({"pid": os.getpid(), "workdir": str(workdir), "cgroups": [str(d) for d in cgroup_dirs]})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data.encode(), 0)

    def release(self) -> None:
        """After a clean close: nothing left to clean, and the uid is free again."""
        os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the only descriptor drops the flock


def claim_uids(n: int, first: int, span: int = 4096) -> list[UidClaim]:
    """``n`` uids from ``first`` up that no live sandbox holds, each cleaned of a dead holder's leftovers."""
    claims: list[UidClaim] = []
    d = lock_dir()
    for uid in range(first, first + span):
        if len(claims) == n:
            break
        claim = _try_claim(d / f"uid-{uid}.lock", uid)
        if claim is not None:
            claims.append(claim)
    if len(claims) < n:
        for c in claims:
            c.release()
        raise RuntimeError(f"fewer than {n} free sandbox uids in {first}..{first + span - 1} (see {d})")
    return claims


def _try_claim(path: Path, uid: int) -> UidClaim | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a live sandbox holds it
        os.close(fd)
        return None
    previous = os.pread(fd, 1 << 16, 0)
    try:
        clean_leftovers(uid, json.loads(previous) if previous else {})
    except (OSError, RuntimeError, ValueError) as e:  # a uid we cannot clean is not safe to use
        os.close(fd)
        log.warning("sandbox uid %d skipped: leftovers of a dead runner could not be removed: %s", uid, e)
        return None
    return UidClaim(uid, fd)


def clean_leftovers(uid: int, record: dict) -> None:
    """Kill every process of ``uid`` and remove the work dir, its mount and the cgroups a dead holder recorded."""
    if record:
        log.info("code sandbox: cleaning what runner pid %s left for uid %d", record.get("pid"), uid)
    for d in map(Path, record.get("cgroups", [])):
        _empty_cgroup(d)
    kill_uid(uid)
    for d in map(Path, record.get("cgroups", [])):
        if d.is_dir():
            d.rmdir()
    workdir = record.get("workdir")
    if workdir:
        if os.path.ismount(workdir):
            subprocess.run(["umount", "--lazy", workdir], capture_output=True, check=True)
        shutil.rmtree(workdir, ignore_errors=True)
        root = Path(workdir).parent  # the dead sandbox's folder: gone once its last slot is
        if root.is_dir() and not any(p.name.startswith("slot") for p in root.iterdir()):
            shutil.rmtree(root, ignore_errors=True)


def _empty_cgroup(d: Path) -> None:
    def members() -> list[int]:
        try:
            return [int(p) for p in (d / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    kill_until_gone(members)


def kill_until_gone(list_pids: Callable[[], Collection[int]], timeout_s: float = 5.0, reap: bool = False) -> bool:
    """SIGKILL every pid ``list_pids()`` returns until it returns none (a fork racing the kill is caught on the
    next round; a killed process stays listed until the kernel has torn it down, hence the short sleeps). With
    ``reap``, those that are our children are reaped. Returns whether none is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = list_pids()
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            if reap:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        time.sleep(0.002)
    return not list_pids()


def uid_pids(uid: int) -> list[int]:
    """Live (non-zombie) processes of ``uid``. Zombies hold no resources and cannot act; they wait for their
    parent (our own children are reaped here, orphans by init)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                pids.append(int(name))
    return pids


def kill_uid(uid: int, timeout_s: float = 5.0) -> None:
    """SIGKILL all processes owned by ``uid`` until none is left; reap those that became our children."""
    if not kill_until_gone(lambda: uid_pids(uid), timeout_s, reap=True):
        raise RuntimeError(f"processes of uid {uid} survive SIGKILL: {uid_pids(uid)}")
