"""What crosses the sandbox boundary: limits, the framed result channel, and the verdicts judged from it.

The harness reports raw values as frames ``R1K <nonce> <index> <nbytes>\\n<json payload>`` (index -1: confinement
confirmed; -2: a C++ program compiled; -3: the judge lost the program's process and asks for a fresh sandbox);
``FrameReader`` parses them strictly and ``judge`` turns one case's frame into an ``Outcome`` by comparing the
reported value with the expected one, which only this side holds. ``Budget``/``BudgetClock`` time a program's cases
together (docs/sandbox.md, "Time budget").
"""

from __future__ import annotations

import json
import logging
import marshal
import math
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from rewards.code.cases import Case
from rewards.code.compare import exact_equal, stdout_matches

_HEADER = re.compile(rb"R1K ([0-9a-f]{32}) (-?\d{1,7}) (\d{1,9})\n")
TEXT_LIMIT = 1000  # chars of stdout/stderr kept per outcome
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0
    """The program's whole time budget: all its cases together (start-up and a C++ compile excluded), not a
    timeout per case. With cpu accounting (a slot cgroup) it is CPU time, and wall time is bounded by
    ``wall_factor`` times it, so a program starved by its neighbours is not failed; without one it is wall time.
    Once it is spent, the running case times out and the remaining ones are reported as timeouts unrun."""
    memory_mb: int = 512
    """Address space per process; the slot cgroup caps all processes together at twice this."""
    nproc: int = 32
    file_mb: int = 16
    tmpfs_mb: int = 64
    nofile: int = 64
    output_kb: int = 256
    """Captured stdout per case; more is an error, not a truncation that could still compare equal."""
    compile_timeout_s: float = 20.0
    """C++ only: wall time for ``g++``."""
    compile_memory_mb: int = 2048
    """C++ only: address space per compiler process (``cc1plus`` maps far more than it touches); the program
    itself then runs under ``memory_mb``."""
    cpus: float = 1.0
    """CPU quota of a slot (all its processes together), where the cgroup cpu controller is writable."""
    wall_factor: float = 2.0
    """With cpu accounting: the wall-clock bound of a program, in units of ``timeout_s``."""

    def wall_s(self, cpu_metered: bool) -> float:
        """The wall-clock bound of one program's cases (see ``timeout_s``).

        >>> Limits(timeout_s=1.5).wall_s(True), Limits(timeout_s=1.5).wall_s(False)
        (3.0, 1.5)
        """
        return self.timeout_s * (self.wall_factor if cpu_metered else 1.0)

    def rlimits(self, language: str = "python") -> dict[str, int]:
        """The harness's limits, inherited by everything it starts. For C++ they must admit the compiler; the
        harness lowers them to ``run_rlimits`` for the program. RLIMIT_CPU is a per-process backstop for the
        budget, which the parent enforces on the whole slot."""
        cpu = math.ceil(self.timeout_s * self.wall_factor) + 2
        memory = self.memory_mb
        if language == "cpp":
            cpu, memory = max(cpu, int(self.compile_timeout_s) + 2), max(memory, self.compile_memory_mb)
        return {
            "AS": memory << 20,
            "NPROC": self.nproc,
            "FSIZE": self.file_mb << 20,
            "NOFILE": self.nofile,
            "CORE": 0,
            "CPU": cpu,
        }

    def run_rlimits(self) -> dict[str, int]:
        """A compiled program's own limits (one case per process)."""
        return {"AS": self.memory_mb << 20, "CPU": math.ceil(self.timeout_s) + 1}

    def frame_limit(self) -> int:
        """Largest result frame accepted: a case's output as escaped JSON (up to 6 bytes per byte written, for
        the replacement character) plus room for stderr and a returned value. It bounds the parent's buffer
        whatever the number of cases."""
        return 8 * (self.output_kb << 10) + (64 << 10)


@dataclass(frozen=True)
class Outcome:
    """One case. ``status``: passed | failed | timeout | memory | error | skipped."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    forgeable: bool = False
    """Always False since asserts are judged unforgeably (docs/sandbox.md); kept for readers of old outcomes."""


@dataclass(frozen=True)
class CodeResult:
    pass_fraction: float
    backend: str
    outcomes: list[Outcome] = field(default_factory=list)

    def outcomes_json(self) -> list[dict]:
        return [asdict(o) for o in self.outcomes]


def _text(payload: dict, key: str) -> str:
    """A reported text field, cut; anything but a string (a forged frame) reads as empty, so no hostile value
    is ever converted (``str`` of a deeply nested list would recurse)."""
    value = payload.get(key, "")
    return value[:TEXT_LIMIT] if isinstance(value, str) else ""


def judge(case: Case, payload: dict, float_tol: float | None) -> Outcome:
    """Verdict for one frame; only the reported value is used, compared with the expected value held here.
    Total on any JSON object a program could forge: it returns an outcome and never raises."""
    status = payload.get("status")
    text = {"stdout": _text(payload, "stdout"), "stderr": _text(payload, "stderr")}
    if status != "ok":
        kind = status if status in ("memory", "timeout") else "error"
        return Outcome(kind, error=_text(payload, "error"), **text)
    if case.kind == "stdio":
        ok = isinstance(payload.get("stdout"), str) and stdout_matches(payload["stdout"], case.expected, float_tol)
    elif case.kind == "call":
        ok = "value" in payload and exact_equal(payload["value"], case.expected, float_tol)
    else:  # check: the trusted test code ran in the judge process, which alone writes frames
        ok = payload.get("passed") is True
        return Outcome("passed" if ok else "failed", error="" if ok else _text(payload, "error"), **text)
    return Outcome("passed" if ok else "failed", **text)


class FrameReader:
    """Strict incremental parser of ``R1K <nonce> <index> <nbytes>\\n<payload>``; anything else is a violation
    (``ValueError``, whatever the bytes). Memory is bounded by ``frame_limit``, whatever the number of frames:
    the buffer holds at most one frame, and a header announcing a larger one is refused before it is read."""

    def __init__(self, nonce: str, frame_limit: int) -> None:
        self.nonce, self.frame_limit, self.buf = nonce.encode(), frame_limit, bytearray()

    def feed(self, data: bytes) -> list[tuple[int, dict]]:
        self.buf += data
        frames = []
        while self.buf:
            m = _HEADER.match(self.buf)
            if m is None:
                if b"\n" in self.buf[:80] or len(self.buf) >= 80:
                    raise ValueError("malformed frame header")
                break
            if m.group(1) != self.nonce:
                raise ValueError("frame with a wrong nonce")
            size = int(m.group(3))
            if size > self.frame_limit:
                raise ValueError(f"frame of {size} bytes, over the {self.frame_limit}-byte limit")
            end = m.end() + size
            if len(self.buf) < end:
                break
            frames.append((int(m.group(2)), _payload(bytes(self.buf[m.end() : end]))))
            del self.buf[:end]
        return frames


def _payload(raw: bytes) -> dict:
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: a forged payload nested thousands deep
        raise ValueError(f"frame payload is not JSON: {type(e).__name__}") from None
    if not isinstance(payload, dict):
        raise ValueError("frame payload is not an object")
    return payload


@dataclass
class Budget:
    """One program's time budget (``Limits.timeout_s``), spent across the processes its cases run in."""

    cpu_s: float
    wall_s: float
    metered: bool
    """Whether CPU time is measured (the slot's cgroup has cpu accounting); else only wall time counts."""
    cpu_used: float = 0.0
    wall_used: float = 0.0

    @staticmethod
    def of(limits: Limits, metered: bool) -> Budget:
        return Budget(limits.timeout_s, limits.wall_s(metered), metered)

    def spent(self) -> str | None:
        """Why the budget is spent, or None.

        >>> b = Budget.of(Limits(timeout_s=1.0), metered=True)
        >>> b.wall_used = 1.5; b.spent() is None
        True
        >>> b.cpu_used = 1.0; b.spent()
        'CPU time budget (1 s) spent'
        """
        if self.metered and self.cpu_used >= self.cpu_s:
            return f"CPU time budget ({self.cpu_s:g} s) spent"
        if self.wall_used >= self.wall_s:
            return f"wall-clock bound ({self.wall_s:g} s) reached"
        return None


class BudgetClock:
    """Times one process against the program's ``Budget``: wall time since ``start`` and, with a ``meter`` (the
    slot cgroup's CPU seconds), CPU time. The meter is read only when the budget could be spent by now (CPU
    seconds grow at most ``rate`` per second: the slot's quota), so a fast program never pays for a read.
    ``slack`` lets the harness report a C++ timeout itself before the parent's wall bound hits."""

    def __init__(self, budget: Budget, meter: Callable[[], float] | None, rate: float, slack: float = 0.0) -> None:
        self.budget, self.meter, self.rate, self.slack = budget, meter, rate, slack
        self.t0: float | None = None
        self.c0 = self.cpu_check = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = self.meter() if self.meter is not None else 0.0
        self.cpu_check = self.t0 + max(self.budget.cpu_s - self.budget.cpu_used, 0.0) / self.rate

    def left(self) -> tuple[float, str | None]:
        """(seconds to wait before asking again, why the budget is spent or None)."""
        b, now = self.budget, time.monotonic()
        wall_left = b.wall_s - b.wall_used - (now - self.t0) + self.slack
        if wall_left <= 0:
            return 0.0, f"wall-clock bound ({b.wall_s:g} s) reached"
        if self.meter is None:
            return wall_left, None
        if now >= self.cpu_check:
            cpu_left = b.cpu_s - b.cpu_used - (self.meter() - self.c0)
            if cpu_left <= 0:
                return 0.0, f"CPU time budget ({b.cpu_s:g} s) spent"
            self.cpu_check = now + max(cpu_left / self.rate, 0.005)
        return min(wall_left, self.cpu_check - now), None

    def stop(self) -> None:
        """Charge the budget with what this process used (once)."""
        if self.t0 is None:
            return
        self.budget.wall_used += time.monotonic() - self.t0
        if self.meter is not None:
            self.budget.cpu_used += self.meter() - self.c0
        self.t0 = None


def judge_safely(case: Case, payload: dict, float_tol: float | None) -> Outcome:
    """``judge``, with any exception a forged payload still finds in it counted as the program's failure: an
    abstaining reward would let one hostile completion stop a run (docs/sandbox.md, error policy)."""
    try:
        return judge(case, payload, float_tol)
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as e:
        log.warning("code sandbox: judging a frame raised %s: %s", type(e).__name__, e)
        return Outcome("error", error=f"protocol violation: unjudgeable frame ({type(e).__name__})")


def send_config(stdin, cfg: dict, judged: list | None) -> None:
    """To the harness: ``<10-digit length>`` + marshal(cfg), then the check cases' test code, which only the judge
    reads (after forking the program's process)."""
    blob = marshal.dumps(cfg)
    try:
        stdin.write(b"%010d" % len(blob) + blob + (b"" if judged is None else marshal.dumps(judged)))
        stdin.close()
    except BrokenPipeError:
        pass  # the harness died before reading: reported as a failed start


def crash_outcome(rc: int | None, ended: str, err: bytes, oom: bool) -> Outcome:
    """The outcome of the case a process was on when it ended (``ended``: why we stopped reading) or was killed."""
    stderr = err[-TEXT_LIMIT:].decode(errors="replace")
    if oom:
        return Outcome("memory", stderr=stderr, error="killed by the memory limit")
    if ended.startswith("timeout"):
        return Outcome("timeout", stderr=stderr, error=ended.partition(": ")[2] or "wall-clock timeout")
    if rc == -signal.SIGXCPU or rc == 128 + signal.SIGXCPU:
        return Outcome("timeout", stderr=stderr, error="CPU time limit")
    return Outcome("error", stderr=stderr, error=f"{ended}: process ended before reporting (exit status {rc})")
