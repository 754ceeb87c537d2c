"""Group-relative advantage estimators: ``reward_B`` (NaN = abstained) + ``group_B`` ids -> ``adv_B``.

Rows are matched to groups by explicit ids, never by position. An abstained sample (NaN reward) is left out of
its group's statistics and gets advantage 0, so it contributes nothing to the policy gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.registry import Registry

ADVANTAGES: Registry[Callable[..., torch.Tensor]] = Registry("advantage estimator")
STD_SCALES = ("group", "batch", "none")


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


def _batch_std(reward_B: torch.Tensor) -> torch.Tensor:
    r = reward_B[~torch.isnan(reward_B)].double()
    return r.std() if r.numel() > 1 else torch.zeros((), dtype=torch.float64, device=reward_B.device)


@ADVANTAGES.register("grpo")
def grpo_advantages(
    reward_B: torch.Tensor, group_B: torch.Tensor, *, std_scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO (DeepSeekMath eq. 3 outcome supervision): ``(r - mean_group) / (std + eps)``.

    ``std_scale``: "group" (GRPO), "batch" (std over the whole batch, as in REINFORCE++/Lite PPO) or "none"
    (Dr. GRPO, which argues per-group std scaling biases towards too-easy/too-hard questions).
    The std is the unbiased one (n-1), as in DeepSeekMath's and TRL's implementations.

    >>> r = torch.tensor([1.0, 0.0, 3.0, 3.0]); g = torch.tensor([7, 7, 9, 9])
    >>> grpo_advantages(r, g, std_scale="none")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if std_scale not in STD_SCALES:
        raise ValueError(f"std_scale: {std_scale!r} is not one of {STD_SCALES}")
    _, mean_B, std_B, valid_B = _group_stats(reward_B, group_B)
    adv_B = reward_B.double() - mean_B
    if std_scale != "none":
        scale_B = std_B if std_scale == "group" else _batch_std(reward_B).expand_as(adv_B)
        # A zero std means every reward compared is equal: the numerator is 0 too, and the advantage is 0 (not NaN).
        adv_B = torch.where(scale_B > 0, adv_B / (scale_B + eps), torch.zeros_like(adv_B))
    return torch.where(valid_B, adv_B, torch.zeros_like(adv_B)).to(reward_B.dtype)


@ADVANTAGES.register("rloo")
def rloo_advantages(reward_B: torch.Tensor, group_B: torch.Tensor, *, std_scale: str = "none", eps: float = 1e-4):
    """RLOO (Ahmadian et al. 2024): baseline is the mean of the *other* members, ``(r - mean) * n / (n - 1)``.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0]))
    tensor([ 1.0000, -0.5000, -0.5000])
    """
    if std_scale != "none":
        raise ValueError(f"std_scale: rloo takes only 'none', got {std_scale!r}")
    count_B, mean_B, _, valid_B = _group_stats(reward_B, group_B)
    adv_B = (reward_B.double() - mean_B) * count_B / (count_B - 1).clamp(min=1)
    return torch.where(valid_B, adv_B, torch.zeros_like(adv_B)).to(reward_B.dtype)
