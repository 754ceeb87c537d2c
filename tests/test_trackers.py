from __future__ import annotations

import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.configio import ConfigError
from rl.config import LoggingConfig
from rl.reporting.trackers import TRACKERS, TrackerUnavailableError, open_trackers
from rl.runlog import read_metrics


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_writes_real_event_files(tmp_path):
    trackers = open_trackers(["tensorboard"], tmp_path, {"training": {"lr": 1e-4}})
    for step in (1, 2, 3):
        trackers.log(
            step,
            {
                "reward": 0.25 * step,
                "time/step": 2.0,
                "kl": float("nan"),
                "moe/expert_load": [[0.5, 0.5]],
                "flag": True,
            },
        )
    trackers.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert sorted(scalars) == ["reward", "time/step"]  # NaN, lists and bools stay in metrics.jsonl only
    assert scalars["reward"] == [(1, 0.25), (2, 0.5), (3, 0.75)]


def test_tensorboard_resume_replaces_rerun_steps(tmp_path):
    first = open_trackers(["tensorboard"], tmp_path, {})
    for step in (1, 2, 3, 4):
        first.log(step, {"reward": float(step)})
    first.close()
    resumed = open_trackers(["tensorboard"], tmp_path, {}, start_step=2)  # checkpoint at step 2
    for step in (3, 4):
        resumed.log(step, {"reward": 10.0 * step})
    resumed.close()
    assert read_scalars(tmp_path / "tensorboard")["reward"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "trackio", "mlflow"])
def test_missing_library_names_the_pip_extra(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(TrackerUnavailableError, match=rf"pip install 'r1kit\[{name}\]'"):
        open_trackers([name], tmp_path, {})


class Recorder(types.ModuleType):
    """A stand-in module recording every call as (name, args, kwargs); attributes it was given are returned."""

    def __init__(self, name: str, **returns) -> None:
        super().__init__(name)
        self.calls: list[tuple[str, tuple, dict]] = []
        self._returns = returns

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def call(*args, **kwargs):
            self.calls.append((attr, args, kwargs))
            return self._returns.get(attr)

        return call


def test_wandb_logs_with_steps_and_resumes_the_same_run(tmp_path, monkeypatch):
    run = Recorder("run")
    monkeypatch.setitem(sys.modules, "wandb", Recorder("wandb", init=run))
    t = open_trackers(["wandb"], tmp_path, {"a": 1}, project="p", run_name="r")
    t.log(1, {"reward": 0.5, "skip": [1]})
    t.close()
    init = sys.modules["wandb"].calls[0]
    assert init[0] == "init" and init[2]["project"] == "p" and init[2]["name"] == "r" and init[2]["config"] == {"a": 1}
    assert run.calls == [("log", ({"reward": 0.5},), {"step": 1}), ("finish", (), {})]
    run_id = init[2]["id"]
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    open_trackers(["wandb"], tmp_path, {}, start_step=5)
    assert sys.modules["wandb"].calls[-1][2]["id"] == run_id and sys.modules["wandb"].calls[-1][2]["resume"] == "allow"


def test_trackio_and_mlflow_calls(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", Recorder("trackio"))
    monkeypatch.setitem(sys.modules, "mlflow", Recorder("mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = open_trackers(["trackio", "mlflow"], tmp_path, {"training": {"lr": 0.1}}, project="p")
    t.log(3, {"reward": 1.0})
    t.close()
    trackio, mlflow = sys.modules["trackio"].calls, sys.modules["mlflow"].calls
    assert trackio == [
        ("init", (), {"project": "p", "name": tmp_path.name, "config": {"training": {"lr": 0.1}}}),
        ("log", ({"reward": 1.0},), {"step": 3}),
        ("finish", (), {}),
    ]
    assert [c[0] for c in mlflow] == [
        "set_tracking_uri",
        "set_experiment",
        "start_run",
        "log_params",
        "log_metrics",
        "end_run",
    ]
    assert mlflow[0][1] == ((tmp_path / "mlruns").resolve().as_uri(),)
    assert mlflow[3][1] == ({"training.lr": "0.1"},)
    assert mlflow[4] == ("log_metrics", ({"reward": 1.0},), {"step": 3})


def test_a_failing_tracker_closes_the_ones_already_open(tmp_path, monkeypatch):
    run = Recorder("run")
    monkeypatch.setitem(sys.modules, "wandb", Recorder("wandb", init=run))
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(TrackerUnavailableError):
        open_trackers(["wandb", "mlflow"], tmp_path, {})
    assert run.calls == [("finish", (), {})]


def test_config_validates_tracker_names():
    assert LoggingConfig(trackers=["tensorboard"]).trackers == ["tensorboard"]  # the dev extra installs it
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'") as e:
        LoggingConfig(trackers=["neptune"])
    assert all(name in str(e.value) for name in TRACKERS.names())
    with pytest.raises(ConfigError, match="duplicates"):
        LoggingConfig(trackers=["tensorboard", "tensorboard"])


@pytest.mark.slow
def test_tiny_run_tensorboard_matches_metrics_jsonl(tiny_run_dir):
    metrics = list(read_metrics(tiny_run_dir / "metrics.jsonl"))
    scalars = read_scalars(tiny_run_dir / "tensorboard")
    for key in ("reward", "reward/math_accuracy", "completion_len", "loss"):
        assert [s for s, _ in scalars[key]] == [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
        assert [v for _, v in scalars[key]] == pytest.approx([m[key] for m in metrics], rel=1e-6)  # float32 events
