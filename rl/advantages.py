"""Group-relative advantage estimators: ``reward_B`` (NaN = abstained) + ``group_B`` ids -> ``adv_B``.

Rows are matched to groups by explicit ids, never by position. An abstained sample (NaN reward) is left out of
its group's statistics and gets advantage 0, so it contributes nothing to the policy gradient.

Every estimator is an ``AdvantageEstimator`` in ``ADVANTAGES``, called as
``estimator(reward_B, group_B, *, std_scale=None, eps=1e-4)``; ``std_scale`` names an entry of ``STD_SCALES``
(None = the estimator's default) and must be one the estimator declares (``std_scale_choices``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.registry import Registry, check_signature

ADVANTAGE_POSITIONAL = ("reward_B", "group_B")
ADVANTAGE_KEYWORDS = frozenset({"std_scale", "eps"})

STD_SCALES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]] = Registry("std_scale")
"""``scale(reward_B, group_std_B) -> scale_B`` (float64) dividing ``r - mean_group``, or None: no scaling."""


def _group_stats(reward_B: torch.Tensor, group_B: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-row (count, mean, unbiased std) of the row's group over non-NaN rewards; std is 0 for n < 2."""
    valid_B = ~torch.isnan(reward_B)
    r_B = torch.where(valid_B, reward_B, torch.zeros_like(reward_B)).double()
    _, inv_B = torch.unique(group_B, return_inverse=True)
    n_groups = int(inv_B.max()) + 1 if inv_B.numel() else 0
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=reward_B.device)
    count_U = zeros.index_add(0, inv_B, valid_B.double())
    mean_U = zeros.index_add(0, inv_B, r_B) / count_U.clamp(min=1)
    dev_B = torch.where(valid_B, r_B - mean_U[inv_B], torch.zeros_like(r_B))
    var_U = zeros.index_add(0, inv_B, dev_B**2) / (count_U - 1).clamp(min=1)
    return count_U[inv_B], mean_U[inv_B], var_U.sqrt()[inv_B], valid_B


@STD_SCALES.register("group")
def group_std(reward_B: torch.Tensor, group_std_B: torch.Tensor) -> torch.Tensor:
    """GRPO: each row's own group std."""
    return group_std_B


@STD_SCALES.register("batch")
def batch_std(reward_B: torch.Tensor, group_std_B: torch.Tensor) -> torch.Tensor:
    """REINFORCE++ / Lite PPO: the std of every non-NaN reward of the batch, for every row.

    >>> batch_std(torch.tensor([1.0, 3.0, float("nan")]), torch.zeros(3))  # std(1, 3) = sqrt(2)
    tensor([1.4142, 1.4142, 1.4142], dtype=torch.float64)
    """
    r = reward_B[~torch.isnan(reward_B)].double()
    std = r.std() if r.numel() > 1 else torch.zeros((), dtype=torch.float64, device=reward_B.device)
    return std.expand_as(group_std_B)


@STD_SCALES.register("none")
def no_std(reward_B: torch.Tensor, group_std_B: torch.Tensor) -> None:
    """Dr. GRPO: no scaling (per-group std scaling biases towards too-easy / too-hard questions)."""
    return None


@dataclass(frozen=True)
class AdvantageEstimator:
    """An advantage estimator and the ``std_scale`` values it accepts. Call it as the module docstring says."""

    name: str
    fn: Callable[..., torch.Tensor]
    """``fn(reward_B, group_B, *, std_scale, eps)``."""
    default_std_scale: str
    """Used when ``std_scale`` is None."""
    std_scales: frozenset[str] | None = None
    """The ``std_scale`` names it accepts; None = every name registered in ``STD_SCALES``."""

    def __post_init__(self) -> None:
        check_signature(f"advantage estimator {self.name!r}", self.fn, ADVANTAGE_POSITIONAL, set(ADVANTAGE_KEYWORDS))
        # As functools.wraps: the registry's same-definition test, doctest and help() see the function.
        object.__setattr__(self, "__wrapped__", self.fn)
        object.__setattr__(self, "__doc__", self.fn.__doc__)

    @property
    def std_scale_choices(self) -> list[str]:
        return STD_SCALES.names() if self.std_scales is None else sorted(self.std_scales)

    def check_std_scale(self, std_scale: str) -> None:
        STD_SCALES.get(std_scale)  # an unknown name raises, listing the known ones
        if std_scale not in self.std_scale_choices:
            raise ValueError(f"std_scale: {self.name} takes only {self.std_scale_choices}, got {std_scale!r}")

    def __call__(
        self, reward_B: torch.Tensor, group_B: torch.Tensor, *, std_scale: str | None = None, eps: float = 1e-4
    ) -> torch.Tensor:
        std_scale = self.default_std_scale if std_scale is None else std_scale
        self.check_std_scale(std_scale)
        return self.fn(reward_B, group_B, std_scale=std_scale, eps=eps)


ADVANTAGES: Registry[AdvantageEstimator] = Registry("advantage estimator")


def advantage_estimator(
    name: str, *, default_std_scale: str, std_scales: frozenset[str] | None = None
) -> Callable[[Callable[..., torch.Tensor]], AdvantageEstimator]:
    """Register the decorated function in ``ADVANTAGES`` as an ``AdvantageEstimator``."""

    def deco(fn: Callable[..., torch.Tensor]) -> AdvantageEstimator:
        return ADVANTAGES.register(name)(AdvantageEstimator(name, fn, default_std_scale, std_scales))

    return deco


@advantage_estimator("grpo", default_std_scale="group")
def grpo_advantages(reward_B: torch.Tensor, group_B: torch.Tensor, *, std_scale: str, eps: float) -> torch.Tensor:
    """GRPO (DeepSeekMath eq. 3 outcome supervision): ``(r - mean_group) / (std + eps)``.

    ``std_scale``: "group" (GRPO), "batch" (std over the whole batch, as in REINFORCE++/Lite PPO) or "none"
    (Dr. GRPO, which argues per-group std scaling biases towards too-easy/too-hard questions).
    The std is the unbiased one (n-1), as in DeepSeekMath's and TRL's implementations.

    >>> r = torch.tensor([1.0, 0.0, 3.0, 3.0]); g = torch.tensor([7, 7, 9, 9])
    >>> grpo_advantages(r, g, std_scale="none")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    _, mean_B, std_B, valid_B = _group_stats(reward_B, group_B)
    adv_B = reward_B.double() - mean_B
    scale_B = STD_SCALES.get(std_scale)(reward_B, std_B)
    if scale_B is not None:
        # A zero std means every reward compared is equal: the numerator is 0 too, and the advantage is 0 (not NaN).
        adv_B = torch.where(scale_B > 0, adv_B / (scale_B + eps), torch.zeros_like(adv_B))
    return torch.where(valid_B, adv_B, torch.zeros_like(adv_B)).to(reward_B.dtype)


@advantage_estimator("rloo", default_std_scale="none", std_scales=frozenset({"none"}))
def rloo_advantages(reward_B: torch.Tensor, group_B: torch.Tensor, *, std_scale: str, eps: float) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): baseline is the mean of the *other* members, ``(r - mean) * n / (n - 1)``.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0]))
    tensor([ 1.0000, -0.5000, -0.5000])
    """
    count_B, mean_B, _, valid_B = _group_stats(reward_B, group_B)
    adv_B = (reward_B.double() - mean_B) * count_B / (count_B - 1).clamp(min=1)
    return torch.where(valid_B, adv_B, torch.zeros_like(adv_B)).to(reward_B.dtype)
