"""The run directory's append-only ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.files import atomic_write_text


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete line of a metrics file; a line cut short by a kill is skipped."""
    if not path.is_file():
        return
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


class MetricsLog:
    """One JSON object per step, appended and flushed at once so a killed run keeps every finished step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        """On resume: drop steps the restored checkpoint does not contain (they will be re-run)."""
        kept = [m for m in read_metrics(self.path) if m.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(m) + "\n" for m in kept))

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
