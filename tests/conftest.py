"""Shared fixtures: tiny random MoE models saved locally (no pre-training: they exist to exercise code paths)."""

from __future__ import annotations

import pytest
import torch

from rl.tiny import build_char_tokenizer, tiny_model


@pytest.fixture(scope="session")
def tiny_random_model_dir(tmp_path_factory):
    """``family -> path`` of a randomly initialised tiny MoE with the character tokenizer, built once per session."""
    cache: dict[str, str] = {}

    def get(family: str, **overrides) -> str:
        key = family + repr(sorted(overrides.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{family}")
            tok = build_char_tokenizer()
            model = tiny_model(family, tok, seed=0, **overrides)
            model.save_pretrained(out)
            tok.save_pretrained(out)
            cache[key] = str(out)
        return cache[key]

    return get


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _fresh_r1kit_cache(tmp_path_factory):
    """Build tiny bases into a per-session cache, so tests exercise the build even where ~/.cache holds one."""
    import os

    old = os.environ.get("R1KIT_CACHE")
    os.environ["R1KIT_CACHE"] = str(tmp_path_factory.mktemp("r1kit-cache"))
    yield
    if old is None:
        os.environ.pop("R1KIT_CACHE", None)
    else:
        os.environ["R1KIT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_recipe_run(tmp_path_factory, _fresh_r1kit_cache):
    """The README's main job: ``r1kit train recipes/r1_zero_tiny.yaml``, run once per session as a user would.

    Returns the run directory. Shared by the end-to-end acceptance test and the rollout-inspection tests.
    """
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("tiny-recipe-run") / "run"
    recipe = Path(__file__).parents[1] / "recipes" / "r1_zero_tiny.yaml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rl.cli",
            "train",
            str(recipe),
            "--output-dir",
            str(out),
            "--set",
            "logging.progress=false",
        ],
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return out
