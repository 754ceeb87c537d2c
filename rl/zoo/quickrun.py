"""A run directory to look at: ``$R1KIT_RUN`` if set, else a few steps of the tiny recipe trained on the spot.

The notebooks start with ``run_dir = run_dir_from_env()`` so they work on your run and, headless in CI,
on a fresh one. The tiny run goes through the ``r1kit train`` command line, exactly as a user would start it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO_ROOT / "recipes" / "r1_zero_tiny.yaml"
# A smaller batch than the recipe's (2 prompts x 8 instead of 8 x 8): enough rows to inspect, seconds per step.
FAST = ("algorithm.batch_size=16", "logging.progress=false", "logging.save_every=0")


def train_tiny(run_dir: str | Path, *, steps: int = 3, overrides: Sequence[str] = (), quiet: bool = True) -> Path:
    """Train the tiny recipe for ``steps`` steps into ``run_dir`` (replacing what is there) and return it."""
    if not TINY_RECIPE.is_file():
        raise FileNotFoundError(f"{TINY_RECIPE} not found: run from an r1kit checkout, or set R1KIT_RUN to a run")
    cmd = [sys.executable, "-m", "rl.cli", "train", str(TINY_RECIPE), "--output-dir", str(run_dir), "--overwrite"]
    for item in (f"training.max_steps={steps}", *FAST, *overrides):
        cmd += ["--set", item]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=quiet, text=True)
    if out.returncode:
        raise RuntimeError(f"tiny run failed ({' '.join(cmd)}):\n{out.stderr[-4000:] if quiet else ''}")
    return Path(run_dir)


def run_dir_from_env(var: str = "R1KIT_RUN", *, steps: int = 3) -> Path:
    """``$R1KIT_RUN`` when set (it must exist), else a tiny run in a new temporary directory."""
    given = os.environ.get(var)
    if given:
        path = Path(given)
        if not (path / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"${var}={given} is not an r1kit run directory (no metrics.jsonl)")
        return path
    print(
        f"${var} is not set: training the tiny recipe for {steps} steps (a few minutes on a CPU the first time, "
        "while the tiny base is built and cached)..."
    )
    return train_tiny(Path(tempfile.mkdtemp(prefix="r1kit-run-")), steps=steps)
