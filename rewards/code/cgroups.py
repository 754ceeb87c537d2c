"""Per-slot cgroups: totals that per-process rlimits cannot bound (processes, memory incl. tmpfs pages), and a
reliable list of every process a run left behind.

cgroup v1 (separate ``pids`` and ``memory`` hierarchies) and v2 (unified) are both handled. Slot folders are
created under the runner's own cgroup (so an outer limit still applies) and their ``cgroup.procs`` is chowned to
the slot uid: the harness moves itself in by writing ``0`` before any untrusted code exists, which needs no
race-prone pid hand-over from the parent. Where nothing is writable (most GPU containers) ``SlotCgroup.create``
returns ``None`` and the runner falls back to per-uid process tracking.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rewards.code.claims import kill_until_gone, read_small, remove_tree_contents

__all__ = ["SlotCgroup", "leftover_cgroups", "remove_tree_contents"]  # the last: where the runner imports it

log = logging.getLogger(__name__)
_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup(controller: str) -> Path | None:
    """The folder of this process's cgroup for ``controller`` (``""`` = the v2 unified hierarchy)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            base = _ROOT / controller if (_ROOT / controller).is_dir() else _ROOT
            return base / path.lstrip("/")
        if ctrls == "" and controller == "" and (_ROOT / "cgroup.controllers").exists():
            return _ROOT / path.lstrip("/")
    return None


@dataclass
class SlotCgroup:
    pids_dir: Path
    memory_dir: Path | None
    v2: bool
    cpu_dirs: tuple[Path, ...] = ()
    """v1: the slot's ``cpu`` (quota) and ``cpuacct`` (usage) folders, one when co-mounted; v2: the slot's own
    folder. Empty until ``set_limits`` is given a quota and the cpu controller is writable."""
    cpu_quota: float | None = None
    """The quota last written (in CPUs), so a run with the same limits writes none."""

    @staticmethod
    def create(name: str, uid: int) -> SlotCgroup | None:
        """Make (or reuse) the slot's cgroup; ``None`` where this kernel/container does not let us."""
        try:
            return SlotCgroup._create_v1(name, uid) or SlotCgroup._create_v2(name, uid)
        except OSError as e:  # read-only cgroupfs, no delegation: expected in containers
            log.info("cgroup for %s unavailable: %s", name, e)
            return None

    @staticmethod
    def _create_v1(name: str, uid: int) -> SlotCgroup | None:
        pids_parent = _own_cgroup("pids")
        if pids_parent is None or not pids_parent.is_dir():
            return None
        pids_dir = pids_parent / name
        pids_dir.mkdir(parents=True, exist_ok=True)
        os.chown(pids_dir / "cgroup.procs", uid, uid)
        memory_dir = None
        mem_parent = _own_cgroup("memory")
        if mem_parent is not None:
            memory_dir = mem_parent / name
            memory_dir.mkdir(parents=True, exist_ok=True)
            os.chown(memory_dir / "cgroup.procs", uid, uid)
        return SlotCgroup(pids_dir, memory_dir, v2=False)

    @staticmethod
    def _create_v2(name: str, uid: int) -> SlotCgroup | None:
        parent = _own_cgroup("")
        if parent is None:
            return None
        d = parent / name
        d.mkdir(parents=True, exist_ok=True)
        (parent / "cgroup.subtree_control").write_text("+pids +memory")
        os.chown(d / "cgroup.procs", uid, uid)
        return SlotCgroup(d, d, v2=True)

    @property
    def procs_files(self) -> list[Path]:
        dirs = {self.pids_dir, self.memory_dir} - {None}
        return [d / "cgroup.procs" for d in sorted(dirs)]

    def set_limits(self, nproc: int, memory_bytes: int, cpus: float | None = None) -> None:
        """Process count, memory (incl. tmpfs pages) and, with ``cpus``, a CPU quota of that many CPUs for the
        whole slot: a program's spinning children then share its quota instead of starving the other slots."""
        (self.pids_dir / "pids.max").write_text(str(nproc))
        if self.memory_dir is not None:
            name = "memory.max" if self.v2 else "memory.limit_in_bytes"
            (self.memory_dir / name).write_text(str(memory_bytes))
        if cpus is not None and cpus != self.cpu_quota and self.enable_cpu():
            self.set_cpu_quota(cpus)
            self.cpu_quota = cpus

    # -- cpu: quota and usage ---------------------------------------------------------------------------------
    _CPU_PERIOD_US = 100_000

    def enable_cpu(self) -> bool:
        """Create the slot's cpu (and cpuacct) folders once; False where the controller is absent or not ours.
        The harness joins them with the others (``cpu_procs_files``) before any untrusted code runs."""
        if self.cpu_dirs:
            return True
        if self.v2:
            parent = self.pids_dir.parent
            try:
                if "cpu" not in (parent / "cgroup.controllers").read_text().split():
                    return False
                (parent / "cgroup.subtree_control").write_text("+cpu")
            except OSError as e:
                log.info("cgroup cpu controller unavailable for %s: %s", self.pids_dir, e)
                return False
            self.cpu_dirs = (self.pids_dir,)
            return True
        uid = os.stat(self.pids_dir / "cgroup.procs").st_uid
        dirs = []
        for controller in ("cpu", "cpuacct"):
            parent = _own_cgroup(controller)
            if parent is None or not parent.is_dir():
                return False
            d = parent / self.pids_dir.name
            try:
                d.mkdir(exist_ok=True)
                os.chown(d / "cgroup.procs", uid, uid)
            except OSError as e:
                log.info("cgroup %s controller unavailable for %s: %s", controller, d, e)
                return False
            if d not in dirs:  # cpu,cpuacct co-mounted: one folder
                dirs.append(d)
        self.cpu_dirs = tuple(dirs)
        return True

    @property
    def cpu_procs_files(self) -> list[Path]:
        """``cgroup.procs`` of the cpu folders that are not already in ``procs_files`` (v2: none)."""
        return [d / "cgroup.procs" for d in self.cpu_dirs if d not in (self.pids_dir, self.memory_dir)]

    def set_cpu_quota(self, cpus: float) -> None:
        quota = max(int(cpus * self._CPU_PERIOD_US), 1000)
        if self.v2:
            (self.cpu_dirs[0] / "cpu.max").write_text(f"{quota} {self._CPU_PERIOD_US}")
            return
        for d in self.cpu_dirs:
            if (d / "cpu.cfs_quota_us").exists():
                (d / "cpu.cfs_period_us").write_text(str(self._CPU_PERIOD_US))
                (d / "cpu.cfs_quota_us").write_text(str(quota))

    def cpu_usage_s(self) -> float | None:
        """CPU seconds used by every process that ever ran in the slot (cumulative; callers take differences);
        ``None`` without cpu accounting."""
        for d in self.cpu_dirs:
            if self.v2:
                for line in (d / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
            elif (d / "cpuacct.usage").exists():
                return int((d / "cpuacct.usage").read_text()) / 1e9
        return None

    def remove_cpu(self) -> None:
        """Remove the v1 cpu/cpuacct folders (v2: the slot folder itself goes with ``remove``)."""
        for d in self.cpu_dirs:
            if d not in (self.pids_dir, self.memory_dir):
                try:
                    d.rmdir()
                except OSError as e:
                    log.warning("could not remove cgroup %s: %s", d, e)
        self.cpu_dirs = ()

    def oom_kills(self) -> int:
        if self.memory_dir is None:
            return 0
        path = self.memory_dir / ("memory.events" if self.v2 else "memory.oom_control")
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files:
            try:
                found.update(int(p) for p in f.read_text().split())
            except FileNotFoundError:  # already removed (close() after an outside cleanup)
                pass
        return found

    def count(self) -> int:
        """Tasks charged to the slot, zombies included (``cgroup.procs`` omits them; ``pids.current`` keeps
        them until they are reaped): one read that tells a clean slot from one whose uid still holds pids."""
        return int(read_small(str(self.pids_dir / "pids.current")))

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every member until none is left."""
        return kill_until_gone(self.pids, timeout_s)

    def remove(self) -> None:
        self.kill_all()
        for d in {self.pids_dir, self.memory_dir} - {None}:
            try:
                d.rmdir()
            except OSError as e:
                log.warning("could not remove cgroup %s: %s", d, e)


def leftover_cgroups(prefix: str) -> list[Path]:
    """Folders named ``prefix*`` under this process's own cgroups (every hierarchy a slot may use)."""
    found: set[Path] = set()
    for controller in ("pids", "memory", "cpu", "cpuacct", ""):
        parent = _own_cgroup(controller)
        if parent is not None and parent.is_dir():
            found.update(p for p in parent.glob(prefix + "*") if p.is_dir())
    return sorted(found)
