"""Isolation tiers, strongest first. Each one turns a slot into the argv/cwd that starts the harness.

``bwrap``   bubblewrap as the slot uid: every namespace unshared, no network, read-only minimal root, size-capped
            tmpfs work dir and /dev/shm, --die-with-parent, --new-session.
``unshare`` util-linux unshare as the slot uid: user/pid/net/ipc/uts/mount namespaces, private /proc; host
            filesystem view limited by Landlock and uid permissions.
``process`` plain process as the slot uid in its own session: seccomp (no sockets), Landlock file rules.
``rlimits`` no uid drop, no seccomp requirement: only rlimits. The weakest; needs an explicit opt-in.
In every tier the harness also applies rlimits, seccomp and Landlock (where the kernel has them) itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.registry import Registry

# The system prefix the interpreter needs, mounted/allowed read-only; symlinked on merged-/usr distributions.
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    cwd: str
    harness_view: str
    """Path of the harness folder as the sandboxed process sees it."""
    work_view: str
    landlock_ro: list[str]
    landlock_rw: list[str]
    cgroup_view: list[str]
    drop_uid: bool = True


@dataclass(frozen=True)
class Tier:
    name: str
    rank: int
    """Lower is stronger."""
    requires: Callable[[], str | None]
    """Returns why this tier cannot work here, or None."""
    launch: Callable[..., Launch]
    weak: bool = False
    helpers: bool = False
    """Its launcher (bwrap, unshare) runs as the slot uid outside the slot cgroup and may outlive ``proc``
    briefly, so the runner also sweeps the uid after every run."""


TIERS: Registry[Tier] = Registry("sandbox tier")


def _python_dirs(python: str) -> list[str]:
    prefix = str(Path(os.path.realpath(python)).parent.parent)
    return [] if any(prefix == d or prefix.startswith(d + "/") for d in _SYSTEM_DIRS) else [prefix]


def _host_ro(python: str, lib_dir: str) -> list[str]:
    return [*_SYSTEM_DIRS, "/etc/ld.so.cache", "/dev/urandom", "/dev/zero", lib_dir, *_python_dirs(python)]


def _need_root() -> str | None:
    return None if os.geteuid() == 0 else "needs root to run each slot as its own uid"


def _need_binary(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if shutil.which(name) is None:
            return f"`{name}` not installed (apt-get install -y {'bubblewrap' if name == 'bwrap' else 'util-linux'})"
        return _need_root()

    return check


def _bwrap(python, lib_dir, workdir, cgroup_files, tmpfs_bytes, harness_cmd) -> Launch:
    # --as-pid-1: the harness is the namespace's init, so its exit tears the namespace down at once and no
    # bwrap reaper (outside the slot cgroup) is left to die asynchronously; ~5 ms less per run.
    argv = ["bwrap", "--unshare-all", "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for d in _python_dirs(python):
        argv += ["--ro-bind", d, d]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--ro-bind", lib_dir, "/r1kit"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm"]
    argv += ["--size", str(tmpfs_bytes), "--tmpfs", "/work"]
    cg_view = []
    for i, f in enumerate(cgroup_files):
        cg_view.append(f"/r1kit-cg/{i}")
        argv += ["--bind", str(f), cg_view[-1]]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/work", "--", *harness_cmd("/r1kit")]
    ro = [*_SYSTEM_DIRS, "/etc/ld.so.cache", "/dev/urandom", "/dev/zero", "/r1kit", *_python_dirs(python)]
    return Launch(argv, workdir, "/r1kit", "/work", ro, ["/work", "/dev/shm", "/dev/null"], cg_view)


def _unshare(python, lib_dir, workdir, cgroup_files, tmpfs_bytes, harness_cmd) -> Launch:
    argv = [
        "unshare",
        "--user",
        "--map-current-user",
        "--pid",
        "--fork",
        "--kill-child",
        "--net",
        "--ipc",
        "--uts",
        "--mount",
        "--mount-proc",
        "--",
        *harness_cmd(lib_dir),
    ]
    files = [str(f) for f in cgroup_files]
    return Launch(argv, workdir, lib_dir, workdir, _host_ro(python, lib_dir), [workdir, "/dev/null"], files)


def _process(python, lib_dir, workdir, cgroup_files, tmpfs_bytes, harness_cmd) -> Launch:
    files = [str(f) for f in cgroup_files]
    return Launch(
        harness_cmd(lib_dir), workdir, lib_dir, workdir, _host_ro(python, lib_dir), [workdir, "/dev/null"], files
    )


def _rlimits(python, lib_dir, workdir, cgroup_files, tmpfs_bytes, harness_cmd) -> Launch:
    launch = _process(python, lib_dir, workdir, [], tmpfs_bytes, harness_cmd)
    return Launch(**{**launch.__dict__, "drop_uid": False})


TIERS.add("bwrap", Tier("bwrap", 0, _need_binary("bwrap"), _bwrap, helpers=True))
TIERS.add("unshare", Tier("unshare", 1, _need_binary("unshare"), _unshare, helpers=True))
TIERS.add("process", Tier("process", 2, _need_root, _process))
TIERS.add("rlimits", Tier("rlimits", 3, lambda: None, _rlimits, weak=True))


def ordered_tiers() -> list[Tier]:
    return sorted((TIERS.get(n) for n in TIERS), key=lambda t: t.rank)


def sandbox_python() -> str:
    """An interpreter every slot uid can execute: ours when its path is world-traversable (a pyenv under a
    0700 /root is not), else the system one. The harness needs only the stdlib."""
    for candidate in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if candidate and _world_executable(os.path.realpath(candidate)):
            return os.path.realpath(candidate)
    raise FileNotFoundError("no python3 that an unprivileged uid can execute (checked sys.executable, python3)")


def _world_executable(path: str) -> bool:
    p = Path(path)
    if not p.is_file() or not os.stat(p).st_mode & 0o001:
        return False
    return all(os.stat(d).st_mode & 0o001 for d in p.parents)
