"""Metrics that say how they combine over processes, declared where they are defined.

Every process computes a step's metrics on its own rows; ``rl.distributed.Dist.reduce_metrics`` turns them into
one value per name. A plain number is averaged (processes hold equal numbers of rows). A count, a throughput or a
wall time says otherwise where it is computed: ``Sum(n_errors)``, ``Max(seconds)``. Nothing is inferred from a
metric's name. After the reduction every value is a plain number again (``unwrap``): the metrics log and the
trackers never see a ``Metric``.

>>> step = {"reward": 0.5, "reward/acc/errors": Sum(1), "time/step": Max(2.0)}  # this process's metrics
>>> others = {"reward": 1.0, "reward/acc/errors": 3, "time/step": 5.0}  # the values another process gathered
>>> {k: reduce_values([value_of(v), others[k]], reduction_of(v)) for k, v in step.items()}
{'reward': 0.75, 'reward/acc/errors': 4, 'time/step': 5.0}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.registry import Registry

Reduction = Callable[[Sequence[float]], float]
REDUCTIONS: Registry[Reduction] = Registry("metric reduction")
"""Reduction name -> function of the N processes' values (in rank order)."""


@REDUCTIONS.register("mean")
def _mean(v_N: Sequence[float]) -> float:
    """Processes hold equal numbers of rows, so the mean of their means is the mean over all rows."""
    return sum(v_N) / len(v_N)


@REDUCTIONS.register("sum")
def _sum(v_N: Sequence[float]) -> float:
    """Counts and throughputs: each process adds its own."""
    return sum(v_N)


@REDUCTIONS.register("max")
def _max(v_N: Sequence[float]) -> float:
    """Maxima and wall times: a step takes as long as its slowest process."""
    return max(v_N)


@dataclass(frozen=True)
class Metric:
    """A scalar metric with the reduction that combines its per-process values (a ``REDUCTIONS`` name).

    >>> Metric(3, reduce="sum")
    Metric(value=3, reduce='sum')
    >>> Metric(3, reduce="median")
    Traceback (most recent call last):
    ...
    ValueError: Metric.reduce: unknown metric reduction 'median'; known: max, mean, sum
    """

    value: float
    reduce: str = "mean"
    """How the processes' values combine: ``mean`` (a plain number's default), ``sum`` or ``max``."""

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(
                f"Metric.reduce: unknown metric reduction {self.reduce!r}; known: {', '.join(REDUCTIONS.names())}"
            )
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise TypeError(f"Metric.value: must be a number, got {type(self.value).__name__}")


# Capitalised like the types they build: a metric reads as a declaration, ``{"tokens_per_s": Sum(x)}``.
def Sum(value: float) -> Metric:
    """A count or throughput: the step's value is the sum over processes."""
    return Metric(value, reduce="sum")


def Max(value: float) -> Metric:
    """A maximum or wall time: the step's value is the largest over processes."""
    return Metric(value, reduce="max")


def Mean(value: float) -> Metric:
    """The default, spelled out: the step's value is the mean over processes."""
    return Metric(value, reduce="mean")


def value_of(v: Any) -> Any:
    """The plain value of a metric (a ``Metric``'s number; anything else as it is)."""
    return v.value if isinstance(v, Metric) else v


def reduction_of(v: Any) -> str:
    """The declared reduction of a metric: a ``Metric``'s, else ``mean``."""
    return v.reduce if isinstance(v, Metric) else "mean"


def is_scalar(v: Any) -> bool:
    """Whether a metric is one number (reduced by its declaration) rather than a list or other value."""
    return isinstance(v, Metric) or isinstance(v, int | float)


def unwrap(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with every ``Metric`` replaced by its plain value.

    >>> unwrap({"tokens_per_s": Sum(12.5), "reward": 0.5, "moe/expert_load": [[0.5, 0.5]]})
    {'tokens_per_s': 12.5, 'reward': 0.5, 'moe/expert_load': [[0.5, 0.5]]}
    """
    return {k: value_of(v) for k, v in metrics.items()}


def reduce_values(v_N: Sequence[float], how: str) -> float:
    """One scalar metric's values on the N processes, in rank order, combined by the reduction named ``how``.

    >>> reduce_values([1.0, 3.0], "mean"), reduce_values([1.0, 3.0], "sum"), reduce_values([1.0, 3.0], "max")
    (2.0, 4.0, 3.0)
    """
    return REDUCTIONS.get(how)(v_N)
