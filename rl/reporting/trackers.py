"""Experiment trackers: where a step's metrics go besides ``metrics.jsonl`` (which is always written).

A recipe names them in ``logging.trackers`` (``[tensorboard, wandb, trackio, mlflow]``). Each tracker imports its
library only when it is opened, so none is a hard dependency; a missing one fails at start-up naming the pip extra.
Trackers receive the finite scalar metrics of a step; lists (``moe/expert_load``) stay in ``metrics.jsonl``.
"""

from __future__ import annotations

import importlib
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from core.registry import Registry


class TrackerUnavailableError(ImportError):
    """A configured tracker's library is not installed."""


class Tracker(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TrackerContext:
    """What a tracker needs to start: where the run lives, what to call it, and the resolved recipe."""

    run_dir: Path
    project: str
    run_name: str
    config: dict[str, Any]
    start_step: int = 0
    """Last finished step: 0 for a fresh run, the checkpoint's step on resume."""


TRACKERS: Registry[Callable[[TrackerContext], Tracker]] = Registry("tracker")


def require(module: str, extra: str) -> ModuleType:
    """Import a tracker's library or fail with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrackerUnavailableError(
            f"logging.trackers includes {extra!r} but {module!r} cannot be imported ({e}); "
            f"install it with: pip install 'r1kit[{extra}]'"
        ) from e


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict (bools, lists and NaN are left out).

    >>> scalars({"reward": 0.5, "steps": 3, "kl": float("nan"), "moe/expert_load": [[0.5, 0.5]], "ok": True})
    {'reward': 0.5, 'steps': 3.0}
    """
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """
    >>> flatten({"a": {"b": 1, "c": [2]}, "d": None})
    {'a.b': 1, 'a.c': [2], 'd': None}
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN``). A resumed run purges the re-run steps."""

    def __init__(self, ctx: TrackerContext) -> None:
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = ctx.run_dir / "tensorboard"
        self.writer = SummaryWriter(str(self.log_dir), purge_step=ctx.start_step + 1 if ctx.start_step else None)
        if not ctx.start_step:
            import yaml

            self.writer.add_text("config", f"```yaml\n{yaml.safe_dump(ctx.config, sort_keys=False)}```", 0)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # a killed run keeps every logged step, as metrics.jsonl does

    def close(self) -> None:
        self.writer.close()


@TRACKERS.register("wandb")
class WandbTracker:
    """Weights & Biases. The run id is kept in ``RUN/wandb_run_id`` so ``--resume`` continues the same W&B run."""

    def __init__(self, ctx: TrackerContext) -> None:
        self.wandb = require("wandb", "wandb")
        id_file = ctx.run_dir / "wandb_run_id"
        if ctx.start_step and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            id_file.write_text(run_id + "\n")
        self.run = self.wandb.init(
            project=ctx.project, name=ctx.run_name, id=run_id, resume="allow", dir=str(ctx.run_dir), config=ctx.config
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


@TRACKERS.register("trackio")
class TrackioTracker:
    """Hugging Face trackio (a local dashboard, ``trackio show``, or a Space)."""

    def __init__(self, ctx: TrackerContext) -> None:
        self.trackio = require("trackio", "trackio")
        self.trackio.init(project=ctx.project, name=ctx.run_name, config=ctx.config)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.trackio.log(dict(metrics), step=step)

    def close(self) -> None:
        self.trackio.finish()


@TRACKERS.register("mlflow")
class MLflowTracker:
    """MLflow. Without ``MLFLOW_TRACKING_URI`` the store is ``RUN/mlruns`` (``mlflow ui --backend-store-uri ...``)."""

    def __init__(self, ctx: TrackerContext) -> None:
        self.mlflow = require("mlflow", "mlflow")
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            self.mlflow.set_tracking_uri((ctx.run_dir / "mlruns").resolve().as_uri())
        self.mlflow.set_experiment(ctx.project)
        self.mlflow.start_run(run_name=ctx.run_name)
        # MLflow params are short strings: a resolved recipe's long lists are cut rather than rejected.
        self.mlflow.log_params({k: str(v)[:250] for k, v in flatten(ctx.config).items()})

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.mlflow.log_metrics(dict(metrics), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class Trackers:
    """Fan-out to the configured trackers; each gets only the finite scalars of a step."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self.trackers:
            values = scalars(metrics)
            for t in self.trackers:
                t.log(step, values)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


def open_trackers(
    names: Sequence[str],
    run_dir: str | Path,
    config: dict[str, Any],
    *,
    project: str = "r1kit",
    run_name: str | None = None,
    start_step: int = 0,
) -> Trackers:
    """Start every tracker in ``names`` (all imports happen here, so a missing library fails before training)."""
    run_dir = Path(run_dir)
    ctx = TrackerContext(run_dir, project, run_name or run_dir.resolve().name, config, start_step)
    opened = Trackers()
    try:
        for name in names:
            opened.trackers.append(TRACKERS.get(name)(ctx))
    except BaseException:
        opened.close()  # e.g. wandb started but mlflow is missing: do not leave a dangling W&B run
        raise
    return opened
