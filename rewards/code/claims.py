"""Slot uids, claimed with one lock file per uid, and the clean-up of what a dead runner left behind.

Every sandbox slot runs as its own uid. Two sandboxes sharing a uid (two DDP ranks on one machine, a test run
beside a training run) would share its RLIMIT_NPROC budget and kill each other's programs in their per-uid
sweeps, so each slot uid is claimed with an exclusive ``flock`` held for the sandbox's lifetime. The kernel drops
a flock when its holder dies, however it dies; the lock file records the holder's work dir and cgroups, so the
next sandbox that claims the uid removes what a hard-killed runner left: processes (setsid'ed daemons survive a
SIGKILLed runner in the process tier), the tmpfs mount, the work dir and the cgroups.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
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

    def abandon(self) -> None:
        """After a close that could not clean the slot: free the uid but keep the record, so that its next
        claimant removes what is left (``clean_leftovers``)."""
        os.close(self.fd)


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
    """Kill every process of ``uid`` (zombies reaped or waited for), remove its SysV IPC objects, and the work
    dir, its mount and the cgroups a dead holder recorded."""
    if record:
        log.info("code sandbox: cleaning what runner pid %s left for uid %d", record.get("pid"), uid)
    for d in map(Path, record.get("cgroups", [])):
        _empty_cgroup(d)
    kill_uid(uid)
    remove_ipc({uid})
    from rewards.code.cgroups import leftover_cgroups  # here: cgroups imports this module

    recorded = [Path(d) for d in record.get("cgroups", [])]
    names = {d.name for d in recorded}  # also by the slot's name: a record without its cpu folders
    for d in recorded + [d for n in names for d in leftover_cgroups(n) if d.name == n]:
        if d.is_dir():
            d.rmdir()
    workdir = record.get("workdir")
    if workdir:
        if os.path.ismount(workdir):
            subprocess.run(["umount", "--lazy", workdir], capture_output=True, check=True)
        remove_tree(Path(workdir))
        root = Path(workdir).parent  # the dead sandbox's folder: gone once its last slot is
        if root.is_dir() and not any(p.name.startswith("slot") for p in root.iterdir()):
            remove_tree(root)


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


def uid_tasks(uid: int) -> list[tuple[int, str, int]]:
    """``(pid, state, ppid)`` of every process of ``uid``, zombies (state ``Z``) included."""
    tasks = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                with open(f"/proc/{name}/stat", "rb") as f:
                    state, ppid = f.read().rpartition(b")")[2].split()[:2]
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            tasks.append((int(name), state.decode(), int(ppid)))
    return tasks


def uid_pids(uid: int) -> list[int]:
    """Live (non-zombie) processes of ``uid``."""
    return [pid for pid, state, _ in uid_tasks(uid) if state not in ("Z", "X")]


ORPHANS_OK = 4
"""Zombies of a slot uid that init (pid 1) has yet to reap, left for it after a run instead of waited for: a killed
namespace tier orphans the harness, and a container's init may reap only every second or two (1.7 s measured on
this project's CI VM), which would add that to every timed-out run. Bounded so that a program cannot use up the
next one's process limit (``Limits.nproc``, 32) with zombies: beyond it they are waited for."""


def kill_uid(uid: int, timeout_s: float = 5.0, keep: Collection[int] = (), orphans_ok: int = 0) -> None:
    """SIGKILL all processes of ``uid`` until none is left, zombies included: a zombie still counts against the
    uid's RLIMIT_NPROC and its slot's pids.max, so one the runner never reaps (a runner that is pid 1 of a
    container or a subreaper inherits every orphan of the slot) would leave the next program unable to fork.
    Zombies that are our children are reaped here, except ``keep`` (a ``Popen`` that reaps its own, to see its
    exit status); others are waited for, their parent being init or a killed slot process, except up to
    ``orphans_ok`` zombies whose parent is init. Raises ``RuntimeError`` naming what survives."""
    me = os.getpid()
    deadline = time.monotonic() + timeout_s
    while True:
        left = [t for t in uid_tasks(uid) if t[0] not in keep or t[1] not in ("Z", "X")]
        orphans = [t for t in left if t[1] in ("Z", "X") and t[2] == 1 != me]
        if len(left) == len(orphans) <= orphans_ok:
            return
        for pid, state, ppid in left:
            try:
                if state not in ("Z", "X"):
                    os.kill(pid, signal.SIGKILL)
                elif ppid == me:
                    os.waitpid(pid, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"processes of uid {uid} survive SIGKILL or are never reaped (pid, state, ppid): {left}"
            )
        time.sleep(0.002)


def uid_leftovers(uid: int) -> list[str]:
    """What this process left on ``uid`` after releasing it: a claim it still holds or never released, and
    processes (zombies too), SysV IPC objects or message queues of the uid. ``[]`` while another process holds
    the uid (what runs there is not ours) or a dead runner's record awaits the next claimant."""
    path = lock_dir() / f"uid-{uid}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        try:
            record = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
        except ValueError:  # being rewritten by its holder
            record = {}
        mine = record.get("pid") == os.getpid()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return [f"uid {uid}: claim still held by this process ({path})"] if mine else []
        if record and not mine:
            return []
        found = [f"uid {uid}: claim of this process not released ({path})"] if mine else []
        found += [f"uid {uid}: process (pid, state, ppid) {t}" for t in uid_tasks(uid)]
        found += [f"uid {uid}: SysV {kind} id {ident}" for kind, ident, _ in sysv_ipc_objects({uid})]
        found += [f"uid {uid}: message queue {q}" for q in posix_mqueues({uid})]
        return found
    finally:
        os.close(fd)  # drops the lock taken above


# -- SysV IPC and POSIX message queues ------------------------------------------------------------------------
# Without an IPC namespace (the process tier) they outlive the program and, mode 0666, are open to every uid; the
# harness's seccomp filter refuses them in every tier, and this clean-up is the second line (and the leak check).
_SYSV = {"shm": ("shmid", "shmctl"), "msg": ("msqid", "msgctl"), "sem": ("semid", "semctl")}
_IPC_RMID = 0


def read_small(path: str) -> bytes:
    """A small kernel file in one read, without the text layer (these run after every sandboxed program)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 8192)]
        while chunks[-1]:  # seq_file hands out about a page per read
            chunks.append(os.read(fd, 8192))
        return b"".join(chunks)
    finally:
        os.close(fd)


def sysv_ipc_objects(uids: Collection[int]) -> list[tuple[str, int, int]]:
    """``(kind, id, owner uid)`` of every SysV IPC object that one of ``uids`` owns or created (an owner can
    hand an object to another uid with IPC_SET; its creator uid stays)."""
    found = []
    for kind, (id_col, _) in _SYSV.items():
        try:
            header, *rows = read_small(f"/proc/sysvipc/{kind}").decode().splitlines()
        except FileNotFoundError:  # kernel without SysV IPC
            continue
        cols = header.split()
        i_id, i_uid, i_cuid = cols.index(id_col), cols.index("uid"), cols.index("cuid")
        for row in rows:
            f = row.split()
            if int(f[i_uid]) in uids or int(f[i_cuid]) in uids:
                found.append((kind, int(f[i_id]), int(f[i_uid])))
    return found


def posix_mqueues(uids: Collection[int], mount: str = "/dev/mqueue") -> list[str]:
    """POSIX message queues of ``uids``, where an mqueue file system is mounted to list them (no list without)."""
    try:
        with os.scandir(mount) as it:
            return [e.path for e in it if e.stat(follow_symlinks=False).st_uid in uids]
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove_ipc(uids: Collection[int]) -> int:
    """Remove the SysV IPC objects and listable POSIX message queues of ``uids``; returns how many. Three small
    reads of /proc/sysvipc when there is nothing to remove."""
    import ctypes  # only on the rare path

    objects, queues = sysv_ipc_objects(uids), posix_mqueues(uids)
    libc = ctypes.CDLL(None, use_errno=True) if objects else None
    for kind, ident, _ in objects:
        ctl = getattr(libc, _SYSV[kind][1])
        rc = ctl(ident, 0, _IPC_RMID, None) if kind == "sem" else ctl(ident, _IPC_RMID, None)
        if rc != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.EIDRM):  # already gone
            raise OSError(ctypes.get_errno(), f"{kind}ctl(IPC_RMID) of {kind} id {ident}")
    for q in queues:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(q)
    if objects or queues:
        log.warning("code sandbox: removed IPC objects of slot uids %s: %s %s", sorted(uids), objects, queues)
    return len(objects) + len(queues)


# -- work dirs ------------------------------------------------------------------------------------------------
def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it (see ``remove_tree_contents``)."""
    if path.is_dir() and not path.is_symlink():
        remove_tree_contents(path)
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_tree_contents(path: Path) -> None:
    """Empty ``path`` without following symlinks, whatever a program left in it: trees deeper than Python's
    recursion limit, PATH_MAX or our descriptor limit (each subdirectory is moved up to ``path`` and emptied
    there, so at most two descriptors are open and no path is longer than a name), modes like 000 (restored
    when we are not root), fifos, sockets, many files. Raises ``OSError`` for what cannot be removed (an
    immutable file), for the caller's fallback. The common case (a few files) costs one listing and the unlinks."""
    top = _open_dir(str(path), None)
    hoist = f".r1kit-rm-{os.urandom(6).hex()}-"  # names a program cannot have planted
    moved = 0
    try:
        while True:
            before = moved
            for name, is_dir in _entries(top):
                if not is_dir:
                    os.unlink(name, dir_fd=top)
                    continue
                sub = _open_dir(name, top)
                try:
                    for child, child_is_dir in _entries(sub):
                        if child_is_dir:
                            _move_dir(sub, child, top, f"{hoist}{moved}")
                            moved += 1
                        else:
                            os.unlink(child, dir_fd=sub)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=top)
            if moved == before:
                return
    finally:
        os.close(top)


def _entries(dir_fd: int) -> list[tuple[str, bool]]:
    """``(name, is a directory)``; the type comes from the listing (d_type): no stat per entry."""
    with os.scandir(dir_fd) as it:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]


def _open_dir(name: str, dir_fd: int | None) -> int:
    if os.geteuid() != 0:  # root ignores modes; else the program's folder is ours, so restore what it took away
        os.chmod(name, 0o700, dir_fd=dir_fd)  # a directory by its listing's d_type (or the caller's work dir)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def _move_dir(src_fd: int, name: str, dst_fd: int, target: str) -> None:
    try:
        os.rename(name, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except PermissionError:  # not root: moving a directory needs write permission on it (its "..")
        os.chmod(name, 0o700, dir_fd=src_fd)
        os.rename(name, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
