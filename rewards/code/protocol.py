"""What crosses the sandbox boundary: limits, the framed result channel, and the verdicts judged from it.

The harness reports raw values as frames ``R1K <nonce> <index> <nbytes>\\n<json payload>`` (index -1: confinement
confirmed; -2: a C++ program compiled); ``FrameReader`` parses them strictly and ``judge`` turns one case's frame
into an ``Outcome`` by comparing the reported value with the expected one, which only this side holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from rewards.code.cases import Case
from rewards.code.compare import exact_equal, stdout_matches

_HEADER = re.compile(rb"R1K ([0-9a-f]{32}) (-?\d{1,7}) (\d{1,9})\n")
TEXT_LIMIT = 1000  # chars of stdout/stderr kept per outcome


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0
    """Wall time per case; the CPU rlimit is derived from it."""
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

    def rlimits(self, n_cases: int, language: str = "python") -> dict[str, int]:
        """The harness's limits, inherited by everything it starts. For C++ they must admit the compiler; the
        harness lowers them to ``run_rlimits`` for the program."""
        cpu = int(self.timeout_s * max(n_cases, 1)) + 2
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
        return {"AS": self.memory_mb << 20, "CPU": int(self.timeout_s) + 1}


@dataclass(frozen=True)
class Outcome:
    """One case. ``status``: passed | failed | timeout | memory | error | skipped."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    forgeable: bool = False


@dataclass(frozen=True)
class CodeResult:
    pass_fraction: float
    backend: str
    outcomes: list[Outcome] = field(default_factory=list)

    def outcomes_json(self) -> list[dict]:
        return [asdict(o) for o in self.outcomes]


def judge(case: Case, payload: dict, float_tol: float | None) -> Outcome:
    """Verdict for one frame; only the reported value is used, compared with the expected value held here."""
    status = payload.get("status")
    text = {
        "stdout": str(payload.get("stdout", ""))[:TEXT_LIMIT],
        "stderr": str(payload.get("stderr", ""))[:TEXT_LIMIT],
    }
    if status != "ok":
        kind = status if status in ("memory", "timeout") else "error"
        return Outcome(kind, error=str(payload.get("error", ""))[:TEXT_LIMIT], **text)
    if case.kind == "stdio":
        ok = isinstance(payload.get("stdout"), str) and stdout_matches(payload["stdout"], case.expected, float_tol)
    elif case.kind == "call":
        ok = "value" in payload and exact_equal(payload["value"], case.expected, float_tol)
    else:
        return Outcome("passed", forgeable=True, **text)
    return Outcome("passed" if ok else "failed", **text)


class FrameReader:
    """Strict incremental parser of ``R1K <nonce> <index> <nbytes>\\n<payload>``; anything else is a violation."""

    def __init__(self, nonce: str, limit: int) -> None:
        self.nonce, self.limit, self.buf, self.total = nonce.encode(), limit, bytearray(), 0

    def feed(self, data: bytes) -> list[tuple[int, dict]]:
        self.total += len(data)
        if self.total > self.limit:
            raise ValueError("result channel over its size limit")
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
            end = m.end() + int(m.group(3))
            if len(self.buf) < end:
                break
            payload = json.loads(bytes(self.buf[m.end() : end]))
            if not isinstance(payload, dict):
                raise ValueError("frame payload is not an object")
            frames.append((int(m.group(2)), payload))
            del self.buf[:end]
        return frames
