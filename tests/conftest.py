"""Shared fixtures. ``tiny_run_dir``: one short real training run per test session (CLI, TensorBoard on), shared by
every test that needs a run directory, so the suite trains once."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl.quickrun import train_tiny


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step run of recipes/r1_zero_tiny.yaml (2 prompts x 8 completions per step) through ``r1kit train``."""
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    return train_tiny(run_dir, steps=3, overrides=["logging.trackers=[tensorboard]"])
