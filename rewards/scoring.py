"""Binding rewards named in a recipe to a dataset, and scoring a batch with error accounting.

The trainer never calls a reward directly: it calls ``RewardScorer.score``, which checks each reward's output,
records failures (the failing samples abstain; the first traceback is logged) and stops the run when more than
``max_error_fraction`` of a batch fails for one reward.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.base import RewardFn, Scored, accepts_any_column, load_reward, required_columns, score_detailed

log = logging.getLogger(__name__)


class RewardOutputError(ValueError):
    """A reward returned something other than one finite float (or None) per completion."""


class RewardFailureError(RuntimeError):
    """Too many samples failed for one reward: the run stops rather than train on a broken signal."""


@dataclass(frozen=True)
class RewardSpec:
    """One reward of a recipe: ``{name: math_accuracy, weight: 1.0, kwargs: {...}, columns: {answer: solution}}``."""

    name: str
    """Registry name, ``package.module:function`` or ``path/to/file.py:function``."""
    weight: float = 1.0
    """Weight of this reward in the total that advantages are computed from."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the reward on every call (e.g. ``{tolerance: 1e-6}``)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Renames: reward parameter -> dataset column (e.g. ``{answer: solution}``)."""
    alias: str | None = None
    """Name used in metrics and rollouts; defaults to ``name`` (set it to use one reward twice)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("rewards[].name: must be a non-empty string (a registry name or module:function)")
        if not isinstance(self.weight, int | float) or not math.isfinite(self.weight):
            raise ValueError(f"rewards[{self.name}].weight: must be a finite number, got {self.weight!r}")

    @property
    def label(self) -> str:
        return self.alias or self.name


@dataclass
class BoundReward:
    spec: RewardSpec
    fn: RewardFn
    column_map: dict[str, str]
    """reward parameter -> dataset column, for every column the reward receives."""

    def call(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence]
    ) -> list[Scored]:
        kwargs = {param: list(columns[col]) for param, col in self.column_map.items()}
        out = score_detailed(self.fn, list(prompts), list(completions), **kwargs, **self.spec.kwargs)
        return check_output(self.spec.label, out, len(completions))


def bind_rewards(specs: Sequence[RewardSpec], dataset_columns: Sequence[str]) -> list[BoundReward]:
    """Load every reward and check that the dataset provides the columns it needs (fails before any work)."""
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"rewards: duplicate reward names {labels}; give repeated rewards distinct `alias` values")
    available = set(dataset_columns)
    bound = []
    for spec in specs:
        fn = load_reward(spec.name)
        needed = [p for p in required_columns(fn) if p not in spec.kwargs]
        column_map = {p: spec.columns.get(p, p) for p in needed}
        missing = {p: c for p, c in column_map.items() if c not in available}
        if missing:
            raise ValueError(
                f"reward {spec.label!r} needs dataset column(s) {sorted(missing.values())} which the dataset lacks "
                f"(it has {sorted(available)}); add them to the data or map them with rewards[].columns"
            )
        if accepts_any_column(fn):
            # Like TRL: a reward taking **kwargs receives every column it did not name explicitly.
            for col in available - set(column_map.values()) - {"prompt"} - set(spec.kwargs):
                column_map.setdefault(col, col)
        bound.append(BoundReward(spec, fn, column_map))
    return bound


def check_output(label: str, out: Any, n: int) -> list[Scored]:
    if not isinstance(out, list | tuple):
        raise RewardOutputError(f"reward {label!r} returned {type(out).__name__}; it must return a list")
    if len(out) != n:
        raise RewardOutputError(f"reward {label!r} returned {len(out)} values for {n} completions")
    checked = []
    for i, s in enumerate(out):
        v = s.value
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise RewardOutputError(
                    f"reward {label!r} returned {v!r} at index {i}; each value must be a finite float or None"
                )
            s = Scored(float(v), s.info)
        checked.append(s)
    return checked


@dataclass
class RewardScores:
    """Per-reward verdicts for one batch of completions, in batch order."""

    values: dict[str, list[float | None]]
    info: dict[str, list[dict[str, Any]]]
    errors: dict[str, int]
    total: list[float | None]
    """Weighted sum over the rewards that did not abstain; None when every reward abstained."""


class RewardScorer:
    def __init__(self, bound: Sequence[BoundReward], *, max_error_fraction: float = 0.1) -> None:
        self.bound = list(bound)
        self.max_error_fraction = max_error_fraction
        self.error_counts = {b.spec.label: 0 for b in self.bound}
        self._logged: set[str] = set()

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence]
    ) -> RewardScores:
        values, info, errors = {}, {}, {}
        for b in self.bound:
            scored, n_err = self._score_one(b, prompts, completions, columns)
            values[b.spec.label] = [s.value for s in scored]
            info[b.spec.label] = [s.info for s in scored]
            errors[b.spec.label] = n_err
            self.error_counts[b.spec.label] += n_err
            if len(completions) and n_err / len(completions) > self.max_error_fraction:
                raise RewardFailureError(
                    f"reward {b.spec.label!r} failed on {n_err}/{len(completions)} samples, above "
                    f"rewards_max_error_fraction={self.max_error_fraction}; first error is logged above"
                )
        weights = {b.spec.label: b.spec.weight for b in self.bound}
        return RewardScores(values, info, errors, weighted_total(values, weights))

    def _score_one(self, b: BoundReward, prompts, completions, columns) -> tuple[list[Scored], int]:
        try:
            return b.call(prompts, completions, columns), 0
        except RewardOutputError:
            raise
        except Exception:  # user code: record, then isolate the failing samples one by one
            self._log_first(b.spec.label)
        scored, n_err = [], 0
        for i in range(len(completions)):
            row = {k: [v[i]] for k, v in columns.items()}
            try:
                scored.extend(b.call([prompts[i]], [completions[i]], row))
            except RewardOutputError:
                raise
            except Exception as e:
                n_err += 1
                scored.append(Scored(None, {"error": f"{type(e).__name__}: {e}"}))
        return scored, n_err

    def _log_first(self, label: str) -> None:
        if label not in self._logged:
            self._logged.add(label)
            log.error("reward %r raised; failing samples abstain. First traceback:\n%s", label, traceback.format_exc())


def weighted_total(values: Mapping[str, Sequence[float | None]], weights: Mapping[str, float]) -> list[float | None]:
    """Sum of ``weight * value`` over rewards that did not abstain.

    >>> weighted_total({"a": [1.0, None, None], "b": [0.5, 1.0, None]}, {"a": 2.0, "b": 1.0})
    [2.5, 1.0, None]
    """
    n = len(next(iter(values.values()), []))
    out: list[float | None] = []
    for i in range(n):
        parts = [weights[k] * v[i] for k, v in values.items() if v[i] is not None]
        out.append(sum(parts) if parts else None)
    return out
