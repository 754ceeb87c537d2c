"""In-sandbox harness: confines itself, then runs the untrusted program on each case and reports raw values.

Started as ``python -I -S -c "...; import harness; harness.main()"`` (so its bytecode is cached) with a
marshal-encoded config on stdin (parent -> sandbox only: marshal is not safe to *read* from an untrusted source,
so results come back as JSON). It never sees an expected output: it reports what the program printed (stdio
cases) or returned (function cases) on a dedicated pipe, one frame per case,
``R1K <nonce> <index> <nbytes>\\n<json payload>``, and the parent compares. Anything the program does to this
process (patching builtins, forging frames) can therefore only change the values reported, never a verdict.
Stdlib only.
"""

from __future__ import annotations

import _json  # the C string escaper alone: `import json` drags in `re` and costs ~5 ms per run
import builtins
import io
import marshal
import os
import signal
import sys

try:
    import confine  # inside the sandbox: a sibling on sys.path
except ImportError:  # imported as rewards.code.harness (doctest collection, tools)
    from rewards.code import confine

_STATUS_MEMORY = "memory"


class OutputLimit(BaseException):
    """Raised by the capped stdout; a BaseException so that `except Exception` in the program does not eat it."""


class _CappedBytes(io.BytesIO):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, b) -> int:
        if self.tell() + len(b) > self.limit:
            raise OutputLimit(f"output over {self.limit} bytes")
        return super().write(b)


def dumps(x) -> str:
    """JSON text of a value already checked by ``_plain`` (the parent parses it with ``json.loads``)."""
    if x is None:
        return "null"
    if x is True or x is False:
        return "true" if x else "false"
    t = type(x)
    if t is int:
        return int.__repr__(x)
    if t is float:
        if x != x:
            return "NaN"
        if x in (float("inf"), float("-inf")):
            return "Infinity" if x > 0 else "-Infinity"
        return float.__repr__(x)
    if t is str:
        return _json.encode_basestring_ascii(x)
    if t is list:
        return "[" + ",".join(dumps(v) for v in x) + "]"
    return "{" + ",".join(_json.encode_basestring_ascii(k) + ":" + dumps(v) for k, v in x.items()) + "}"


def _plain(x, depth=0):
    """The JSON value of a result, accepting only exact builtin types (no subclasses, so no rigged __eq__/__str__)."""
    if depth > 100:
        raise TypeError("result nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is list or t is tuple:
        return [_plain(v, depth + 1) for v in x]
    if t is dict:
        if any(type(k) is not str for k in x):
            raise TypeError("result dict has non-str keys")
        return {k: _plain(v, depth + 1) for k, v in x.items()}
    raise TypeError(f"result of type {t.__name__} is not a plain JSON value")


class Reporter:
    def __init__(self, fd: int, nonce: str) -> None:
        self.fd, self.nonce = fd, nonce

    def send(self, index: int, payload: dict) -> None:
        data = dumps(payload).encode()
        msg = f"R1K {self.nonce} {index} {len(data)}\n".encode() + data
        while msg:
            msg = msg[os.write(self.fd, msg) :]


def _error(exc: BaseException, limit: int = 500) -> dict:
    status = _STATUS_MEMORY if isinstance(exc, MemoryError) else "error"
    try:
        text = f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: B036 -- a program-defined exception whose __str__ raises
        text = type(exc).__name__
    return {"status": status, "error": text[:limit]}


def _run_code(code, glb: dict, stdin: bytes, out_limit: int) -> tuple[dict, bytes]:
    out = _CappedBytes(out_limit)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(out, encoding="utf-8", errors="replace", write_through=True)
    try:
        exec(code, glb)
        res = {"status": "ok"}
    except SystemExit:  # `exit()` after printing is normal for stdio programs; the output is what is judged
        res = {"status": "ok"}
    except OutputLimit as e:
        res = {"status": "error", "error": f"OutputLimit: {e}"}
    except BaseException as e:  # noqa: B036 -- the program's failure is data here, reported to the parent
        res = _error(e)
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: B036 -- a broken stdout is reported through the captured bytes
        pass
    return res, out.getvalue()


def run_cases(cfg: dict, rep: Reporter) -> None:
    code = compile(cfg["program"], "<program>", "exec")
    out_limit = cfg["output_limit"]
    module_glb = None
    for i, case in enumerate(cfg["cases"]):
        kind = case["kind"]
        if kind == "stdio":
            glb = {"__name__": "__main__", "__builtins__": builtins}
            res, out = _run_code(code, glb, case["input"].encode(), out_limit)
            res["stdout"] = out.decode("utf-8", "replace")
            rep.send(i, res)
            continue
        if module_glb is None:  # function/assert cases share one import of the program, like a test module
            module_glb = {"__name__": "solution", "__builtins__": builtins}
            load, _ = _run_code(code, module_glb, b"", out_limit)
        if load["status"] != "ok":
            rep.send(i, load)
            continue
        rep.send(i, _call(case, module_glb, out_limit))


def _call(case: dict, glb: dict, out_limit: int) -> dict:
    sys.stdout = io.TextIOWrapper(_CappedBytes(out_limit), encoding="utf-8", write_through=True)
    try:
        if case["kind"] == "assert":  # forgeable by construction: the program runs in this very process
            exec(compile(case["src"], "<assert>", "exec"), glb)
            return {"status": "ok"}
        fn = glb.get(case["name"])
        if not callable(fn):
            return {"status": "error", "error": f"NameError: no function {case['name']!r} defined"}
        value = _plain(fn(*case["args"], **case["kwargs"]))
        return {"status": "ok", "value": value}
    except BaseException as e:  # noqa: B036 -- includes SystemExit: exiting instead of returning is a failure
        return _error(e)


# -- compiled programs (C++) ---------------------------------------------------------------------------------
# The program runs as a child of this harness, with every confinement above inherited (rlimits are lowered
# further for it), so a crash, a timeout or a flood costs one case and the harness reports it itself.


def _wait(proc, timeout_s: float) -> bool:
    """Whether ``proc`` exited within ``timeout_s`` (pidfd: no polling)."""
    import select

    pidfd = os.pidfd_open(proc.pid)
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


def _sweep(proc) -> None:
    """Kill ``proc``'s group and every other process this harness could have left (a program may ``setsid``),
    then reap. As the slot uid (every tier but the opt-in rlimits one) ``kill(-1)`` reaches exactly the
    slot's processes: its namespace in bwrap/unshare (where the harness is pid 1), its own uid otherwise."""
    for target in (-proc.pid, -1) if os.getuid() != 0 else (-proc.pid,):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()
    while True:  # orphans of the program are re-parented to us where we are the namespace's init
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break


def _head(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def _spawn(argv: list[str], stdin_path: str, limits: dict | None):
    import subprocess

    def lower_limits() -> None:  # in the child, before exec: only ever lowers the inherited limits
        if limits:
            confine.set_rlimits(limits)

    with open(stdin_path, "rb") as fin, open("out.txt", "wb") as fout, open("err.txt", "wb") as ferr:
        return subprocess.Popen(
            argv,
            stdin=fin,
            stdout=fout,
            stderr=ferr,
            start_new_session=True,
            close_fds=True,
            preexec_fn=lower_limits,
        )


def compile_cpp(cfg: dict) -> dict:
    """``g++`` the program into ``./prog``; ``{"status": "ok"}`` or a compile error with the compiler's output."""
    with open("prog.cpp", "w", encoding="utf-8") as f:
        f.write(cfg["program"])
    with open("in.txt", "wb"):
        pass
    proc = _spawn([cfg["cxx"], *cfg["cxx_flags"], "-o", "prog", "prog.cpp"], "in.txt", None)
    done = _wait(proc, cfg["compile_timeout_s"])
    _sweep(proc)
    err = _head("err.txt", 2000).decode("utf-8", "replace")
    if not done:
        return {"status": "error", "error": "compile timeout", "stderr": err}
    if proc.returncode != 0 or not os.path.exists("prog"):
        return {"status": "error", "error": f"compile error (exit status {proc.returncode})", "stderr": err}
    return {"status": "ok"}


def run_binary(case: dict, cfg: dict) -> dict:
    """One stdio case of the compiled program: input from a file, stdout/stderr to files (each capped by the
    inherited RLIMIT_FSIZE; stdout over the output limit is a flood), wall timeout enforced here."""
    with open("in.txt", "wb") as f:
        f.write(case["input"].encode())
    limit = cfg["output_limit"]
    proc = _spawn(["./prog"], "in.txt", cfg["run_rlimits"])
    done = _wait(proc, cfg["timeout_s"])
    _sweep(proc)
    out, err = _head("out.txt", limit + 1), _head("err.txt", 1000).decode("utf-8", "replace")
    for name in ("in.txt", "out.txt", "err.txt"):
        os.unlink(name)
    rc = proc.returncode
    if not done:
        return {"status": "timeout", "error": "wall-clock timeout", "stderr": err}
    if len(out) > limit:
        return {"status": "error", "error": f"OutputLimit: output over {limit} bytes", "stderr": err}
    if rc == -signal.SIGXFSZ:
        return {"status": "error", "error": "file size limit exceeded", "stderr": err}
    if rc == -signal.SIGXCPU:
        return {"status": "timeout", "error": "CPU time limit", "stderr": err}
    if rc != 0:
        memory = "bad_alloc" in err  # operator new failing under the address-space limit
        what = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        return {"status": _STATUS_MEMORY if memory else "error", "error": what, "stderr": err}
    return {"status": "ok", "stdout": out.decode("utf-8", "replace"), "stderr": err}


def run_cpp(cfg: dict, rep: Reporter) -> None:
    built = compile_cpp(cfg)
    rep.send(-2, {"compiled": built["status"] == "ok"})  # the parent's deadline switches to per-case time
    for i, case in enumerate(cfg["cases"]):
        rep.send(i, built if built["status"] != "ok" else run_binary(case, cfg))


def main() -> None:
    cfg = marshal.loads(sys.stdin.buffer.read())
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)  # the program must not read the parent's pipe
    for path in cfg["cgroup_procs"]:  # join the slot cgroups before anything untrusted exists
        with open(path, "w") as f:
            f.write("0")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over-size writes fail with EFBIG instead of killing us
    report = {"landlock": 0, "seccomp": False}
    if cfg["landlock"] is not None:
        report["landlock"] = confine.apply_landlock(cfg["landlock"]["ro"], cfg["landlock"]["rw"])
    if cfg["seccomp"]:
        confine.apply_seccomp()
        report["seccomp"] = True
    confine.set_rlimits(cfg["rlimits"])
    rep = Reporter(cfg["result_fd"], cfg["nonce"])
    rep.send(-1, report)
    if cfg.get("language") == "cpp":
        run_cpp(cfg, rep)
        os._exit(0)
    try:
        run_cases(cfg, rep)
    except SyntaxError as e:
        for i in range(len(cfg["cases"])):
            rep.send(i, {"status": "error", "error": f"SyntaxError: {e}"[:500]})
    os._exit(0)  # skip interpreter teardown, which the program may have booby-trapped (atexit, __del__)


if __name__ == "__main__":
    main()
