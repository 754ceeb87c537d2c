"""A persistent worker pool with a hard wall-clock limit per call, safe in threads and in worker processes.

Each worker is a fresh interpreter (``python -m rewards.math.pool``) talking length-prefixed pickles over its
stdin/stdout, so it never inherits CUDA state or locks from a process holding torch, the caller's ``__main__`` is
never re-imported (multiprocessing's spawn/forkserver would), and daemonic processes (``multiprocessing.Pool``
workers) may use it too. A call that overruns its limit kills its worker (SIGKILL; no ``signal.alarm``, which
only works in the main thread) and a fresh one is started at once. Workers exit when their stdin closes and are
killed by an ``atexit`` hook, so nothing outlives the interpreter.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from core.cores import cores_per_process

STARTUP_TIMEOUT_S = 60.0
"""A fresh worker imports sympy and the LaTeX grammar before it reports ready; that is not counted in a limit."""
_ROOT = str(Path(__file__).resolve().parents[2])
_HEADER = struct.Struct("<Q")

# The worker's entry point. Not ``python -m rewards.math.pool``: the package ``rewards.math`` imports this module
# first, and runpy then warns that it is already in sys.modules (twice per run, once per worker).
WORKER = "from rewards.math.pool import _worker_main; _worker_main()"


class CheckTimeout(Exception):
    """The call ran past its limit; its worker was killed."""


class WorkerLost(Exception):
    """The worker died (crashed or was killed) before answering."""


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _recv(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("worker pipe closed")
    (n,) = _HEADER.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("worker pipe closed")
    return pickle.loads(data)  # only ever our own worker's replies (or, in the worker, the parent's requests)


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print in library code must not corrupt the reply stream
    warmup = _recv(stdin)
    if warmup:
        _resolve(warmup)()
    _send(stdout, "ready")
    while True:
        try:
            msg = _recv(stdin)
        except EOFError:
            return
        if msg is None:
            return
        ref, args = msg
        _send(stdout, _resolve(ref)(*args))


class _Worker:
    def __init__(self, warmup: str | None) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        _send(self.proc.stdin, warmup)
        self.ready = False

    def poll(self, timeout_s: float) -> bool:
        return bool(select.select([self.proc.stdout], [], [], timeout_s)[0])

    def wait_ready(self) -> None:
        if not self.ready:
            if not self.poll(STARTUP_TIMEOUT_S) or _recv(self.proc.stdout) != "ready":
                raise WorkerLost("worker did not start")
            self.ready = True

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        self.proc.stdin.close()
        self.proc.stdout.close()


class TimeoutPool:
    """``run(fn, args, timeout_s)`` in a worker; at most ``size`` calls at once, extra callers wait."""

    def __init__(self, size: int | None = None, warmup: str | None = None) -> None:
        self.size = size or cores_per_process()
        self.warmup = warmup
        """``module:function`` each worker calls once before reporting ready (imports, caches)."""
        self._reset()
        atexit.register(self.close)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy = 0

    def start(self) -> None:
        """Start every worker and wait until they are ready (so first calls are not slowed by imports)."""
        with self._cond:
            self._check_pid()
            while len(self._idle) + self._busy < self.size:
                self._idle.append(_Worker(self.warmup))
            workers = list(self._idle)
        for w in workers:
            w.wait_ready()

    def run(self, fn: str, args: tuple, timeout_s: float) -> Any:
        """Call ``fn`` (``module:function``) with ``args`` in a worker; raise ``CheckTimeout`` past ``timeout_s``."""
        worker = self._checkout()
        try:
            worker.wait_ready()
            _send(worker.proc.stdin, (fn, args))
            if not worker.poll(timeout_s):
                raise CheckTimeout(f"check exceeded {timeout_s} s")
            result = _recv(worker.proc.stdout)
        except (CheckTimeout, WorkerLost, EOFError, OSError) as e:
            self._replace(worker)
            if isinstance(e, CheckTimeout | WorkerLost):
                raise
            raise WorkerLost(str(e)) from e
        self._checkin(worker)
        return result

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked child (e.g. a fork-context process pool): the workers are not ours
            self._reset()

    def _checkout(self) -> _Worker:
        with self._cond:
            self._check_pid()
            while not self._idle and self._busy >= self.size:
                self._cond.wait()
            self._busy += 1
            ready = [w for w in self._idle if w.ready]
            if ready:
                self._idle.remove(ready[0])
                return ready[0]
            if self._idle:
                return self._idle.pop()
        try:
            return _Worker(self.warmup)
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise

    def _checkin(self, worker: _Worker) -> None:
        with self._cond:
            if self._pid == os.getpid():
                self._idle.append(worker)
            self._busy -= 1
            self._cond.notify()

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        fresh = _Worker(self.warmup)  # starts importing now, ready by the next call
        self._checkin(fresh)

    def close(self) -> None:
        with self._cond:
            if self._pid != os.getpid():
                return
            idle, self._idle = self._idle, []
        for w in idle:
            try:
                _send(w.proc.stdin, None)
                w.proc.wait(timeout=1)
            except (OSError, subprocess.TimeoutExpired):
                pass
            w.kill()


if __name__ == "__main__":
    _worker_main()
