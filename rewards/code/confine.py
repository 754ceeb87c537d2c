"""Self-confinement applied by the harness inside the sandbox before any untrusted code runs.

Stdlib only (this file is imported by ``harness.py`` under ``python -I -S``). Landlock and seccomp are set up
with raw syscalls through ctypes, so no compiled dependency is needed; both are irreversible for the process
and inherited by every child, which is what makes it safe to apply them in the same process that later
``exec``-s the untrusted program.
"""

from __future__ import annotations

import ctypes
import os
import resource
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Landlock syscall numbers are the same on every architecture (generic table).
_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446
_LL_VERSION_FLAG = 1
_LL_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE, _FS_READ, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_FILE_RIGHTS_V1 = _FS_EXECUTE | _FS_WRITE | _FS_READ
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def set_rlimits(limits: dict[str, int]) -> None:
    """``{"AS": bytes, "NPROC": n, ...}``: soft = hard, so the program cannot raise them back."""
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))


def landlock_abi() -> int:
    """Landlock ABI version of the running kernel, 0 when unavailable (old kernel or LSM not enabled)."""
    v = _libc.syscall(_LL_CREATE, None, 0, _LL_VERSION_FLAG)
    return max(int(v), 0)


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= 1 << 13  # refer (rename/link across dirs)
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def apply_landlock(read_only: list[str], read_write: list[str]) -> int:
    """Deny every file access outside the listed trees, all TCP, and (ABI >= 6) signals/abstract sockets outside.

    Returns the ABI used; raises ``OSError`` when the kernel refuses (the parent then reports the tier broken).
    """
    abi = landlock_abi()
    if abi == 0:
        raise OSError("landlock unavailable")
    handled_fs = _fs_rights(abi)
    handled_net = 0b11 if abi >= 4 else 0  # bind_tcp | connect_tcp, with no rule allowing any port
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets | signals to processes outside the domain
    attr = struct.pack("QQQ", handled_fs, handled_net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(_LL_CREATE, buf, len(attr), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        file_rights = _FS_FILE_RIGHTS_V1 | (_FS_TRUNCATE if abi >= 3 else 0)
        for paths, rights in ((read_only, _FS_EXECUTE | _FS_READ | _FS_READ_DIR), (read_write, handled_fs)):
            for path in paths:
                _add_path_rule(fd, path, rights, file_rights)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
        if _libc.syscall(_LL_RESTRICT, fd, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(fd)
    return abi


def _add_path_rule(ruleset_fd: int, path: str, rights: int, file_rights: int) -> None:
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # e.g. /lib64 on a distribution without it
    try:
        if not os.path.isdir(path):
            rights &= file_rights  # the kernel rejects directory-only rights on a file
        rule = struct.pack("=Qi", rights, pfd)  # struct landlock_path_beneath_attr is packed
        buf = ctypes.create_string_buffer(rule, len(rule))
        if _libc.syscall(_LL_ADD_RULE, ruleset_fd, _LL_RULE_PATH_BENEATH, buf, 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
    finally:
        os.close(pfd)


# Syscalls a test program never needs and that widen the attack surface or reach outside the sandbox.
_BLOCKED = {
    "x86_64": dict(
        socket=41,
        ptrace=101,
        process_vm_readv=310,
        process_vm_writev=311,
        mount=165,
        umount2=166,
        unshare=272,
        setns=308,
        kexec_load=246,
        bpf=321,
        perf_event_open=298,
        userfaultfd=323,
        keyctl=250,
        add_key=248,
        request_key=249,
        io_uring_setup=425,
        pivot_root=155,
        chroot=161,
        init_module=175,
        finit_module=313,
        open_by_handle_at=304,
        pidfd_getfd=438,  # another process's fds (the judge's result pipe); also needs ptrace rights
    ),
    "aarch64": dict(
        socket=198,
        ptrace=117,
        process_vm_readv=270,
        process_vm_writev=271,
        mount=40,
        umount2=39,
        unshare=97,
        setns=268,
        kexec_load=104,
        bpf=280,
        perf_event_open=241,
        userfaultfd=282,
        keyctl=219,
        add_key=217,
        request_key=218,
        io_uring_setup=425,
        pivot_root=41,
        chroot=51,
        init_module=105,
        finit_module=273,
        open_by_handle_at=265,
        pidfd_getfd=438,  # another process's fds (the judge's result pipe); also needs ptrace rights
    ),
}
_ARCH = {"x86_64": (0xC000003E, 56), "aarch64": (0xC00000B7, 220)}  # AUDIT_ARCH_*, clone nr
# Channels between concurrent slots (docs/sandbox_slots.md). SysV IPC and POSIX message queues: the process tier
# has no IPC namespace, so objects would be shared by every slot and outlive the program (ranges, inclusive).
_IPC_RANGES = {
    "x86_64": ((29, 31), (64, 71), (220, 220), (240, 245)),  # shmget..shmctl, semget..msgctl, semtimedop, mq_*
    "aarch64": ((180, 197),),  # mq_open .. shmdt
}
# Locks and access watches on the read-only system files every slot shares: flock and fcntl locks work on a
# read-only fd, inotify/fanotify see another slot open a file; Landlock stops none of them.
_WATCHES = {
    "x86_64": dict(flock=73, inotify_init=253, inotify_add_watch=254, inotify_init1=294, fanotify_init=300),
    "aarch64": dict(flock=32, inotify_init1=26, inotify_add_watch=27, fanotify_init=262),
}
_FCNTL = {"x86_64": 72, "aarch64": 25}
_FCNTL_LOCKS = (5, 6, 7, 36, 37, 38, 1026)  # F_GETLK, F_SETLK, F_SETLKW, F_OFD_{GETLK,SETLK,SETLKW}, F_NOTIFY
_CLONE3 = 435
_NS_FLAGS = 0x7E020000  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}
_RET_ALLOW, _RET_KILL = 0x7FFF0000, 0x80000000
_EPERM, _ENOSYS = 1, 38


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_program(machine: str) -> bytes:
    """The BPF filter: wrong arch -> kill, blocked syscall (incl. SysV IPC, message queues, flock, inotify and
    fcntl's lock commands) -> EPERM, clone3 -> ENOSYS (glibc falls back to clone, whose flags a classic filter
    can read), clone with namespace flags -> EPERM, anything else allowed."""
    arch, clone_nr = _ARCH[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [_bpf(ld, 4), _bpf(jeq, arch, 1, 0), _bpf(ret, _RET_KILL), _bpf(ld, 0)]
    if machine == "x86_64":  # x32 syscalls share the arch value; refuse them wholesale
        prog += [_bpf(jge, 0x40000000, 0, 1), _bpf(ret, 0x50000 | _EPERM)]
    for nr in (*_BLOCKED[machine].values(), *_WATCHES[machine].values()):
        prog += [_bpf(jeq, nr, 0, 1), _bpf(ret, 0x50000 | _EPERM)]
    for lo, hi in _IPC_RANGES[machine]:  # lo <= nr <= hi -> EPERM
        prog += [_bpf(jge, lo, 0, 2), _bpf(0x25, hi, 1, 0), _bpf(ret, 0x50000 | _EPERM)]  # 0x25: jgt
    n = len(_FCNTL_LOCKS)  # fcntl: a lock command (low 32 bits of args[1], as the kernel reads it) -> EPERM
    prog += [_bpf(jeq, _FCNTL[machine], 0, n + 3), _bpf(ld, 24)]
    prog += [_bpf(jeq, cmd, n - i, 0) for i, cmd in enumerate(_FCNTL_LOCKS)]
    prog += [_bpf(ret, _RET_ALLOW), _bpf(ret, 0x50000 | _EPERM)]
    prog += [_bpf(jeq, _CLONE3, 0, 1), _bpf(ret, 0x50000 | _ENOSYS)]
    prog += [_bpf(jeq, clone_nr, 0, 3), _bpf(ld, 16), _bpf(jset, _NS_FLAGS, 0, 1), _bpf(ret, 0x50000 | _EPERM)]
    prog += [_bpf(ret, _RET_ALLOW)]
    return b"".join(prog)


def apply_seccomp() -> None:
    """Install the filter (no sockets, no ptrace, no namespaces); raises ``OSError`` where unsupported."""
    machine = os.uname().machine
    if machine not in _ARCH:
        raise OSError(f"seccomp filter not written for {machine}")
    code = seccomp_program(machine)
    filt = ctypes.create_string_buffer(code, len(code))

    class _SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _SockFprog(len(code) // 8, ctypes.addressof(filt))
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(SECCOMP)")
