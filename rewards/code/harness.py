"""In-sandbox harness: confines itself, then runs the untrusted program on each case and reports raw values.

Started as ``python -I -S -c "...; import harness; harness.main()"`` (so its bytecode is cached) with a
length-prefixed marshal-encoded config on stdin, then, for check cases, their test code (parent -> sandbox only:
marshal is not safe to *read* from an untrusted source, so results come back as JSON). It never sees an expected
output of a stdio or function case: it reports what the program printed or returned on a dedicated pipe, one frame
per case,
``R1K <nonce> <index> <nbytes>\\n<json payload>``, and the parent compares. Anything the program does to this
process (patching builtins, forging frames) can therefore only change the values reported, never a verdict.
Check cases (asserts tests) are the exception that needs trusted code in here: this process then becomes the
judge, which never runs the program and runs it in a forked child instead (see "judged tests" below).
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
        fn = glb.get(case["name"])
        if not callable(fn):
            return {"status": "error", "error": f"NameError: no function {case['name']!r} defined"}
        value = _plain(fn(*case["args"], **case["kwargs"]))
        return {"status": "ok", "value": value}
    except BaseException as e:  # noqa: B036 -- includes SystemExit: exiting instead of returning is a failure
        return _error(e)


# -- judged tests (asserts, HumanEval's check(candidate)) ---------------------------------------------------
# The trusted test code runs here, in the judge (this process, the only holder of the result fd), which never runs
# model code. The program runs in a child forked before the test sources were read (so they are not in its
# memory) that answers calls over two pipes: the judge's proxies send (name, args, kwargs) as marshal (trusted ->
# untrusted only) and get back a tagged JSON value that is rebuilt here from exact builtin types only, so no
# program-defined __eq__, __bool__ or __del__ can run in the judge. Both processes are non-dumpable, and seccomp
# blocks ptrace, process_vm_* and pidfd_getfd, so the child cannot reach the judge's memory or fds.
_PR_SET_DUMPABLE = 4
_EXC_NAMES = frozenset(
    n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, Exception) and n != "ProgramError"
)


class ProgramGone(BaseException):  # noqa: N818 -- a BaseException: a test's `except Exception` must not eat it
    """The program's process died or broke the call protocol: the judge cannot ask it anything more."""


class ProgramError(Exception):
    """The program raised an exception that is not a builtin one (its type is only a name here)."""


def _send_msg(fd: int, data: bytes) -> None:
    msg = b"%010d" % len(data) + data
    while msg:
        msg = msg[os.write(fd, msg) :]


def _recv_msg(fd: int, limit: int) -> bytes:
    head = _read_exact(fd, 10)
    if len(head) < 10:
        raise ProgramGone("program process ended")
    if not head.isdigit() or int(head) > limit:
        raise ProgramGone(f"reply over {limit} bytes or malformed")
    data = _read_exact(fd, int(head))
    if len(data) != int(head):
        raise ProgramGone("program process ended mid-reply")
    return data


def _set_nondumpable() -> None:
    """Only a dumpable process's memory, fds and /proc files are open to another process of its uid."""
    if confine._libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")


def _tagged(x, depth: int = 0):
    """Program side: a value as JSON with its exact container types tagged (``[tag, items]``), so a tuple, a set
    or bytes come back as themselves. Only exact builtin types; anything else is the program's error."""
    if depth > 100:
        raise TypeError("result nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    tag = {list: "l", tuple: "t", set: "s", frozenset: "f"}.get(t)
    if tag is not None:
        return [tag, [_tagged(v, depth + 1) for v in x]]
    if t is dict:
        return ["d", [[_tagged(k, depth + 1), _tagged(v, depth + 1)] for k, v in x.items()]]
    if t is bytes:
        return ["b", x.decode("latin-1")]
    if t is complex:
        return ["c", [x.real, x.imag]]
    raise TypeError(f"result of type {t.__name__} is not a plain value")


_UNTAG = {"l": list, "t": tuple, "s": set, "f": frozenset}


def _untag(v, depth: int = 0):
    """Judge side: the inverse of ``_tagged`` on untrusted JSON; raises ValueError/TypeError on anything else."""
    if depth > 100:
        raise ValueError("reply nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is not list or len(v) != 2 or type(v[0]) is not str:
        raise ValueError("malformed value")
    tag, items = v
    if tag in _UNTAG and type(items) is list:
        return _UNTAG[tag](_untag(x, depth + 1) for x in items)
    if tag == "d" and type(items) is list:
        pairs = [(_untag(p[0], depth + 1), _untag(p[1], depth + 1)) for p in items if type(p) is list and len(p) == 2]
        if len(pairs) != len(items):
            raise ValueError("malformed dict")
        return dict(pairs)
    if tag == "b" and type(items) is str:
        return items.encode("latin-1")
    if tag == "c" and type(items) is list and len(items) == 2 and all(type(x) is float for x in items):
        return complex(items[0], items[1])
    raise ValueError(f"unknown tag {tag!r}")


def serve_program(cfg: dict, req_fd: int, resp_fd: int) -> None:
    """The program's process: import the program once, then answer calls until the judge closes the pipe."""
    glb = {"__name__": "solution", "__builtins__": builtins}
    out_limit = cfg["output_limit"]
    try:
        code = compile(cfg["program"], "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        load = _error(e)
    else:
        load, _ = _run_code(code, glb, b"", out_limit)
    _send_msg(resp_fd, dumps(load).encode())
    if load["status"] != "ok":
        return
    while True:
        try:
            name, args, kwargs = marshal.loads(_recv_msg(req_fd, 1 << 30))
        except ProgramGone:  # the judge is done
            return
        sys.stdout = io.TextIOWrapper(_CappedBytes(out_limit), encoding="utf-8", write_through=True)
        try:
            fn = glb.get(name)
            if not callable(fn):
                raise NameError(f"no function {name!r} defined")
            reply = {"value": _tagged(fn(*args, **kwargs))}
        except BaseException as e:  # noqa: B036 -- the program's failure is data, reported to the judge
            reply = {"raised": type(e).__name__, **_error(e)}
        _send_msg(resp_fd, dumps(reply).encode())


class ProgramProcess:
    """Judge side: the forked program's process and the calls made into it."""

    def __init__(self, cfg: dict, result_fd: int) -> None:
        import json  # only judged runs pay for it

        self.loads, self.limit = json.loads, 4 * cfg["output_limit"] + (64 << 10)
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        go_r, self.go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the program's process: no result fd, nothing of the test sources
            for fd in (result_fd, cfg["sources_fd"], self.req_w, self.resp_r, self.go_w):
                os.close(fd)
            try:
                # Wait until the judge has read the test sources: a program running before that could stop the
                # judge (SIGSTOP) while the parent is still blocked writing them to a full pipe.
                if os.read(go_r, 1):
                    os.close(go_r)
                    serve_program(cfg, req_r, resp_w)
            finally:
                os._exit(0)
        for fd in (req_r, resp_w, go_r):
            os.close(fd)
        self.gone: str | None = None
        self.load: dict = {}

    def start(self) -> None:
        """Let the program's process import the program; ``load`` is its status."""
        os.write(self.go_w, b"g")
        os.close(self.go_w)
        try:
            self.load = self._reply()
        except ProgramGone:  # it died while importing the program (os._exit at import time, a crash)
            self.load = {"status": "error", "error": self.gone or "program process ended while loading"}

    def _reply(self) -> dict:
        try:
            reply = self.loads(_recv_msg(self.resp_r, self.limit))
        except (ValueError, RecursionError) as e:
            reply = e
        if not isinstance(reply, dict):
            self.gone = f"malformed reply from the program's process: {str(reply)[:100]}"
            raise ProgramGone(self.gone)
        return reply

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.gone is not None:
            raise ProgramGone(self.gone)
        try:
            request = marshal.dumps((name, tuple(args), dict(kwargs)))
        except ValueError as e:  # the test passed something marshal cannot carry (a function, an object)
            raise TypeError(f"argument to {name}() cannot be sent to the program: {e}") from None
        try:
            _send_msg(self.req_w, request)
            reply = self._reply()
        except ProgramGone as e:
            self.gone = self.gone or str(e)
            raise
        except OSError as e:  # EPIPE: the program's process is gone
            self.gone = f"program process ended ({e.strerror})"
            raise ProgramGone(self.gone) from None
        if "value" in reply:
            try:
                return _untag(reply["value"])
            except (ValueError, TypeError, RecursionError) as e:  # TypeError: an unhashable key or set item
                self.gone = f"malformed value from the program's process: {e}"
                raise ProgramGone(self.gone) from None
        raised, text = reply.get("raised"), str(reply.get("error", ""))[:500]
        if raised in _EXC_NAMES:  # the test may expect e.g. a ValueError; the type is rebuilt from builtins
            raise getattr(builtins, raised)(text.partition(": ")[2])
        raise ProgramError(text)

    def proxy(self, target: str):
        def call(*args, **kwargs):
            return self.call(target, args, kwargs)

        call.__name__ = call.__qualname__ = target
        return call

    def close(self) -> None:
        for fd in (self.req_w, self.resp_r):
            os.close(fd)  # go_w was closed by start
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def judge_check(src: dict, prog: ProgramProcess) -> dict:
    """Run one check case's trusted test code with proxies for the program's functions."""
    glb = {"__name__": "__test__", "__builtins__": builtins}  # not __main__: a test's main guard stays off
    for name in src["modules"]:
        glb[name] = __import__(name)  # a stdlib module the test uses unimported (the prompt imported it)
    for name in src["proxies"]:
        if not hasattr(builtins, name):  # a proxy must never shadow a builtin the test relies on (abs, sorted)
            glb[name] = prog.proxy(src["entry_point"] if name == "candidate" else name)
    try:
        exec(compile(src["src"], "<test>", "exec"), glb)
        res = {"status": "ok", "passed": True}
    except AssertionError as e:
        tb, line = e.__traceback__, 0
        while tb is not None:  # the test's own line (the last frame in "<test>")
            line = tb.tb_lineno if tb.tb_frame.f_code.co_filename == "<test>" else line
            tb = tb.tb_next
        res = {"status": "ok", "passed": False, "error": f"{_error(e)['error']} (test line {line})"}
    except ProgramGone:
        res = None
    except BaseException as e:  # noqa: B036 -- what the program's values made the test raise is its failure
        res = _error(e)
    if prog.gone is not None:  # even when the test swallowed it: the program did not answer
        return {"status": "error", "error": prog.gone}
    return res


def _judge_call(case: dict, prog: ProgramProcess) -> dict:
    try:
        return {"status": "ok", "value": _plain(prog.call(case["name"], case["args"], case["kwargs"]))}
    except ProgramGone:
        return {"status": "error", "error": prog.gone}
    except BaseException as e:  # noqa: B036 -- the program raised, or returned a value that is not plain
        return _error(e)


def run_judged(cfg: dict, rep: Reporter) -> None:
    """Judge mode: function and check cases through the program's process. When that process dies, the judge
    sends frame -3 after the case it was on and exits: a fresh sandbox (forked before any test source was read)
    runs the rest, rather than a re-fork of this process, whose memory now holds the test sources."""
    _set_nondumpable()
    prog = ProgramProcess(cfg, cfg["result_fd"])
    sources = marshal.loads(_read_exact(cfg["sources_fd"], 1 << 40))  # to EOF
    os.close(cfg["sources_fd"])
    prog.start()
    for i, case in enumerate(cfg["cases"]):
        if prog.load.get("status") != "ok":
            rep.send(i, {"status": prog.load.get("status", "error"), "error": str(prog.load.get("error", ""))})
            continue
        if case["kind"] == "stdio":  # parse_tests never mixes them; a direct caller might
            res = {"status": "error", "error": "stdio cases cannot share a run with check cases"}
        else:
            res = judge_check(sources[i], prog) if case["kind"] == "check" else _judge_call(case, prog)
        rep.send(i, res)
        if prog.gone is not None:
            rep.send(-3, {"restart": True})
            break
    prog.close()


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


def run_binary(case: dict, cfg: dict, wall_s: float) -> dict:
    """One stdio case of the compiled program: input from a file, stdout/stderr to files (each capped by the
    inherited RLIMIT_FSIZE; stdout over the output limit is a flood), ended here after ``wall_s``."""
    with open("in.txt", "wb") as f:
        f.write(case["input"].encode())
    limit = cfg["output_limit"]
    proc = _spawn(["./prog"], "in.txt", cfg["run_rlimits"])
    done = _wait(proc, wall_s)
    _sweep(proc)
    out, err = _head("out.txt", limit + 1), _head("err.txt", 1000).decode("utf-8", "replace")
    for name in ("in.txt", "out.txt", "err.txt"):
        os.unlink(name)
    rc = proc.returncode
    if not done:
        return {"status": "timeout", "error": "wall-clock bound reached", "stderr": err}
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
    rep.send(-2, {"compiled": built["status"] == "ok"})  # the program's time budget starts now
    import time

    end = time.monotonic() + cfg["timeout_s"]  # the wall bound of all cases together (the parent meters CPU)
    for i, case in enumerate(cfg["cases"]):
        if built["status"] != "ok":
            rep.send(i, built)
        elif (left := end - time.monotonic()) <= 0:
            rep.send(i, {"status": "timeout", "error": "not run: wall-clock bound reached"})
        else:
            rep.send(i, run_binary(case, cfg, left))


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    # stdin: "<10-digit length>" + marshal(cfg) [+ marshal(test sources)]. The test sources (check cases) are read
    # only by the judge, after the program's process was forked, so they are never in that process's memory.
    cfg = marshal.loads(_read_exact(0, int(_read_exact(0, 10))))
    if any(c["kind"] == "check" for c in cfg["cases"]):
        cfg["sources_fd"] = os.dup(0)
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
    if "sources_fd" in cfg:
        run_judged(cfg, rep)
        os._exit(0)
    try:
        run_cases(cfg, rep)
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte in the source
        for i in range(len(cfg["cases"])):
            rep.send(i, {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]})
    os._exit(0)  # skip interpreter teardown, which the program may have booby-trapped (atexit, __del__)


if __name__ == "__main__":
    main()
