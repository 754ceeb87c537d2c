"""Live progress for long work (rich), and the end-of-run summary table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# In a log file (CI, nohup, a notebook's captured stderr) rich would wrap at 80 columns and cut the progress line:
# write long lines whole there instead.
console = Console(stderr=True, soft_wrap=True)

# Shown on the progress line, in this order, when present in a step's metrics.
LIVE_KEYS = ("reward", "kl", "clip_frac", "completion_len", "tokens_per_s")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def live_line(metrics: Mapping[str, Any]) -> str:
    """A one-line digest of a step: each reward's mean first, then the usual health numbers."""
    parts = [
        f"{k.removeprefix('reward/')}={fmt(v)}"
        for k, v in metrics.items()
        if k.startswith("reward/") and k.count("/") == 1
    ]
    parts += [f"{k}={fmt(metrics[k])}" for k in LIVE_KEYS if k in metrics]
    return " ".join(parts)


class StepProgress:
    def __init__(self, total: int, start: int, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]GRPO"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[line]}"),
            console=console,
            disable=not enabled or not console.is_terminal,  # no live bar in a log file: plain lines (update)
        )
        self.task = self.progress.add_task("train", total=total, completed=start, line="")
        self.enabled = enabled

    def __enter__(self) -> StepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, metrics: Mapping[str, Any]) -> None:
        line = live_line(metrics)
        self.progress.update(self.task, advance=1, line=line)
        task = self.progress.tasks[0]
        if self.enabled and not console.is_terminal and (task.completed % 10 == 0 or task.finished):
            # No live display in a log file: print a plain line every 10 steps instead.
            console.print(f"step {int(task.completed)}/{int(task.total)} {line}", soft_wrap=True)


def summary_table(summary: Mapping[str, Any]) -> Table:
    table = Table(title="r1kit run summary", show_header=True)
    table.add_column("")
    table.add_column("base", justify="right")
    table.add_column("trained", justify="right")
    for key in sorted(k.removeprefix("final_") for k in summary if k.startswith("final_")):
        table.add_row(key, fmt(summary.get(f"base_{key}", "-")), fmt(summary[f"final_{key}"]))
    table.caption = (
        f"{summary['steps']} steps in {summary['wall_seconds']:.0f}s, world size {summary['world_size']}; "
        f"held-out prompts: {summary.get('eval_prompts', '-')}"
    )
    return table
