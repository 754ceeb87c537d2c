"""Sandbox slots: one uid, work dir (a tmpfs where it can be mounted) and cgroup each; the pool that hands them out
and retires one whose clean-up failed; the clean-up after every run; and ``leftovers``, what closed sandboxes left.

Split from ``runner`` (which starts and judges the runs) so that each file reads in one sitting.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from rewards.code.cgroups import SlotCgroup, leftover_cgroups, remove_tree_contents
from rewards.code.claims import ORPHANS_OK, kill_uid, remove_ipc, uid_leftovers
from rewards.code.protocol import Limits

log = logging.getLogger("rewards.code.runner")  # one logger for the sandbox's warnings, as before the split


class SandboxUnavailableError(RuntimeError):
    """No isolation tier works here (or the one asked for does not); the message lists why each failed."""


@dataclass
class Slot:
    index: int
    uid: int
    workdir: Path
    tmpfs: bool
    cgroup: SlotCgroup | None
    retired: str = ""
    """Why the slot was taken out of service (its clean-up failed twice); empty while in service."""


class SlotPool(queue.Queue):
    """The free slots. A retired slot is dropped instead of re-queued, so no later program runs in what a
    hostile one left; once every slot is retired, waiters get ``SandboxUnavailableError`` instead of hanging."""

    def __init__(self, slots: list[Slot]) -> None:
        super().__init__()
        self._in_service = len(slots)
        self._count_lock = threading.Lock()
        for s in slots:
            super().put(s)

    def put(self, slot: Slot | None, block: bool = True, timeout: float | None = None) -> None:
        if slot is not None and slot.retired:
            with self._count_lock:
                self._in_service -= 1
                if self._in_service == 0:
                    super().put(None)  # wakes every waiter (each one puts it back)
            return
        super().put(slot, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Slot:
        slot = super().get(block, timeout)
        if slot is None:
            super().put(None)
            raise SandboxUnavailableError("every sandbox slot was taken out of service (see the log for why)")
        return slot


# Every sandbox this process made: (root folder, slot uids), for ``leftovers``.
MADE: list[tuple[Path, tuple[int, ...]]] = []


def clean_slot(
    slot: Slot, proc: subprocess.Popen | None, grace_s: float, sweep_uid: bool, ipc: bool, limits: Limits
) -> None:
    """Kill every process of the slot (zombies too), reap, remove the uid's IPC objects (with ``ipc``: the tiers
    without an IPC namespace), empty the work dir.

    With a cgroup its member list is complete (the harness joins before any untrusted code exists, and the
    namespace tiers' own helpers exit with ``proc``); without one, every process of the slot uid is killed
    (setsid'ed daemons included). Zombies count against the uid's RLIMIT_NPROC and the slot's pids.max: the
    cgroup's task count (one read) tells when any is left, reparented to a runner that never reaps them (pid 1 of
    a container, a subreaper). Raises ``OSError``/``RuntimeError`` when the slot cannot be made clean."""
    root = os.geteuid() == 0
    killed = stop_run(proc, grace_s)
    if slot.cgroup is not None and not slot.cgroup.kill_all():
        raise RuntimeError(f"slot {slot.index}: processes survive SIGKILL in its cgroup: {sorted(slot.cgroup.pids())}")
    # Killed namespace tiers leave bwrap/unshare helpers (outside the cgroup) dying asynchronously.
    swept = root and (slot.cgroup is None or killed or sweep_uid)
    if swept:
        # Popen reaps its own (for the exit status); a few zombies init has yet to reap are left to it.
        kill_uid(slot.uid, keep=() if proc is None else (proc.pid,), orphans_ok=ORPHANS_OK)
    if proc is not None:
        proc.wait()
        proc.stderr.close()
    if root and not swept and slot.cgroup is not None and slot.cgroup.count() > 0:
        kill_uid(slot.uid, orphans_ok=ORPHANS_OK)  # zombies (or a straggler): reap ours, leave init a few
    if root and ipc:  # three reads (~40 us); the seccomp filter already refuses SysV IPC, this is the second line
        remove_ipc({slot.uid})
    try:
        remove_tree_contents(slot.workdir)
    except OSError as e:  # an immutable file, say: replacing the work dir always works
        log.warning("code sandbox: slot %d: emptying %s failed (%s); replacing it", slot.index, slot.workdir, e)
        renew_workdir(slot, limits.tmpfs_mb)
    if root:  # a program may have chmod-ed its work dir (the namespace tiers' is the slot's own)
        os.chmod(slot.workdir, 0o700)
        os.chown(slot.workdir, slot.uid, slot.uid)


def stop_run(proc: subprocess.Popen | None, grace_s: float) -> bool:
    """Let ``proc`` exit within ``grace_s`` (a harness that reported everything exits at once), else SIGKILL it
    and its process group. Returns whether it had to be killed."""
    if proc is None or proc.poll() is not None or (grace_s and wait_exit(proc, grace_s)):
        return False
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except ProcessLookupError:
            pass
    return True


def mount_tmpfs(workdir: Path, uid: int, size_mb: int) -> bool:
    opts = f"size={size_mb}m,mode=0700,uid={uid},gid={uid},nosuid,nodev"
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(workdir)], capture_output=True).returncode
        == 0
    )


def renew_workdir(slot: Slot, tmpfs_mb: int) -> None:
    """A fresh, empty work dir in place of one that could not be emptied, in O(1) whatever it holds: a new tmpfs
    (the old one is detached), else the old folder is moved aside and left for ``close``."""
    if slot.tmpfs:
        umount = subprocess.run(["umount", "--lazy", str(slot.workdir)], capture_output=True, text=True)
        if umount.returncode != 0:
            raise RuntimeError(f"umount {slot.workdir}: {umount.stderr.strip()}")
        if not mount_tmpfs(slot.workdir, slot.uid, tmpfs_mb):
            slot.tmpfs = False
            raise RuntimeError(f"could not mount a fresh tmpfs on {slot.workdir}")
        return
    os.rename(slot.workdir, slot.workdir.with_name(f"{slot.workdir.name}.old-{os.urandom(4).hex()}"))
    slot.workdir.mkdir(mode=0o700)


def leftovers() -> list[str]:
    """What the sandboxes this process made left behind once closed: processes (zombies too), SysV IPC objects
    or message queues of their slot uids, uid claims not released, slot cgroups, and mounts or folders under
    their roots. ``[]`` when none is left, or none was made. A uid another live sandbox claimed since is not
    checked: what runs there is not ours."""
    if not MADE:
        return []
    found = []
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for root, uids in MADE:
        if os.geteuid() == 0:
            for uid in uids:
                found += uid_leftovers(uid)
        found += [f"mount {m}" for m in mounts if m == str(root) or m.startswith(f"{root}/")]
        if root.exists():
            found.append(f"folder {root}")
    found += [f"cgroup {d}" for d in leftover_cgroups(f"r1kit-{os.getpid()}-")]
    return found


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether ``proc`` exits within ``timeout_s`` (a pidfd wakes us at once; Popen.wait(timeout) polls)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)
