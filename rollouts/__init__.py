"""Rollout generation (``backends``), prompt data (``data``, ``tasks``), typed records (``records``) and the rollout
store (``store``): every step's completions as Parquet in the run directory.

>>> import rollouts
>>> callable(rollouts.load) and callable(rollouts.load_dataset)
True
"""

from __future__ import annotations

from rollouts.store import load, load_dataset

__all__ = ["load", "load_dataset"]
