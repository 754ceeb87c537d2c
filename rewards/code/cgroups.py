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
import shutil
from dataclasses import dataclass
from pathlib import Path

from rewards.code.claims import kill_until_gone

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

    def set_limits(self, nproc: int, memory_bytes: int) -> None:
        (self.pids_dir / "pids.max").write_text(str(nproc))
        if self.memory_dir is not None:
            name = "memory.max" if self.v2 else "memory.limit_in_bytes"
            (self.memory_dir / name).write_text(str(memory_bytes))

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


def remove_tree_contents(path: Path) -> None:
    """Empty a work dir without following symlinks the program planted."""
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=False)
        else:
            entry.unlink()
