"""Rollout generation (``backends``), prompt data (``data``, ``tasks``), typed records (``records``) and the rollout
store (``store``): every step's completions as Parquet in the run directory.

>>> import rollouts
>>> callable(rollouts.load) and callable(rollouts.load_dataset)
True
"""

from __future__ import annotations

__all__ = ["load", "load_dataset"]


def __getattr__(name: str):
    # Imported on first use: the store needs pyarrow and torch, and ``rl.config`` (which imports the light
    # ``rollouts.adapters``) must read a recipe without either.
    if name in __all__:
        from rollouts import store

        return getattr(store, name)
    raise AttributeError(f"module 'rollouts' has no attribute {name!r}")
