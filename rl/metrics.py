"""A training step's reward and length metrics, each with its reduction over processes declared
(``core.metrics``: a plain number is averaged).

>>> from rollouts.records import Completion, Prompt
>>> batch = RolloutBatch([Completion(0, Prompt("p", "q"), [1], [2, 3], "ab", "eos"),
...                       Completion(0, Prompt("p", "q"), [1], [2, 3, 4, 5], "abcd", "length")])
>>> length_metrics(batch)
{'completion_len': 3.0, 'completion_len_max': Metric(value=4, reduce='max'), 'truncated_frac': 0.5}
"""

from __future__ import annotations

import math

import torch

from core.metrics import Max, Metric
from rewards.scoring import RewardScores
from rollouts.records import RolloutBatch


def reward_metrics(scores: RewardScores, reward_B: torch.Tensor, group_B: torch.Tensor) -> dict[str, float | Metric]:
    """The total reward's mean and spread over ``reward_B`` (NaN = no total: a weighted reward abstained or failed),
    each reward's ``RewardScores.metrics``, and the share of groups (``group_B``) whose rewards are all equal.

    >>> from rewards.scoring import RewardColumn
    >>> scores = RewardScores.weighted([RewardColumn("acc", (1.0, 0.0, 1.0, 1.0), ({},) * 4)], {"acc": 1.0})
    >>> m = reward_metrics(scores, torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    >>> m["reward"], m["reward/acc"], m["frac_groups_zero_std"]
    (0.75, 0.75, 0.5)
    """
    out: dict[str, float | Metric] = {}
    valid = reward_B[~torch.isnan(reward_B)]
    out["reward"] = valid.mean().item() if valid.numel() else math.nan
    out["reward_std"] = valid.std().item() if valid.numel() > 1 else 0.0
    out.update(scores.metrics())
    # Groups whose rewards are all equal give zero advantage: no learning signal (DAPO's motivation for dynamic
    # sampling). Their share is the first number to look at when reward stops moving.
    stds = [reward_B[group_B == g].nan_to_num(0.0).std().item() for g in group_B.unique()]
    out["frac_groups_zero_std"] = sum(s == 0 for s in stds) / max(len(stds), 1)
    return out


def length_metrics(batch: RolloutBatch) -> dict[str, float | Metric]:
    """Mean and longest completion length (tokens), and the share cut at ``max_new_tokens``."""
    lens = [c.num_tokens for c in batch.completions]
    return {
        "completion_len": sum(lens) / len(lens),
        "completion_len_max": Max(max(lens)),  # the longest over every process's completions
        "truncated_frac": sum(c.finish_reason == "length" for c in batch.completions) / len(lens),
    }
