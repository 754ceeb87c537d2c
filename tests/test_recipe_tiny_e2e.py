"""Acceptance of the main job: the tiny recipe, from an empty cache, teaches the base to trust its reasoning."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_tiny_recipe_improves_held_out_greedy_accuracy(tiny_recipe_run):
    summary = json.loads((tiny_recipe_run / "summary.json").read_text())
    assert summary["eval_prompts"] >= 200
    assert summary["base_accuracy"] <= 0.60, summary
    assert summary["final_accuracy"] >= summary["base_accuracy"] + 0.30, summary
    assert summary["world_size"] == 1 and summary["steps"] == 40
    steps = [json.loads(line)["step"] for line in (tiny_recipe_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
