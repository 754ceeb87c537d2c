"""Collecting a step's groups (``collect_groups``: sample, score, and with dynamic sampling sample again), and DAPO's
batch shaping (Yu et al. 2025): dynamic sampling and overlong filtering.

Dynamic sampling (DAPO §3.2, the constraint ``0 < |{o_i : correct}| < G`` of eq. 11): a group whose rewards are all
equal has zero group-relative advantage, so it adds no gradient but still dilutes the batch. Such groups are
dropped and more prompts are sampled until the batch holds ``prompts`` informative groups, for at most
``max_rounds`` rounds; if still short, the step trains on what it has and reports the shortfall (and if no group
at all is informative, on everything sampled - zero advantages, exactly as without filtering).

Overlong filtering (DAPO §3.4): completions cut at ``max_new_tokens`` (``finish_reason == "length"``) are masked
out of the loss, so a long correct-so-far answer is not punished for the cut. They still count in their group's
advantage statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from core.metrics import Max
from rewards.scoring import RewardScores
from rollouts.records import RolloutBatch


def informative_groups(reward_B: torch.Tensor, group_B: torch.Tensor) -> list[int]:
    """Group ids, in order of first appearance, whose non-NaN rewards take at least two distinct values
    (exactly the groups whose GRPO advantages are not all zero; NaN = abstained, as in ``rl.advantages``).

    >>> informative_groups(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, float("nan")]), torch.tensor([7, 7, 3, 3, 5, 5]))
    [7]
    """
    out = []
    for g in dict.fromkeys(group_B.tolist()):
        r = reward_B[(group_B == g) & ~torch.isnan(reward_B)]
        if r.numel() > 1 and bool((r != r[0]).any()):
            out.append(g)
    return out


def select_groups(reward_B: torch.Tensor, group_B: torch.Tensor, *, need: int) -> torch.Tensor:
    """bool keep_B: the rows of the first ``need`` informative groups (fewer if there are not enough).

    >>> r = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    >>> select_groups(r, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), need=2).tolist()
    [False, False, True, True, True, True, False, False]
    """
    keep = informative_groups(reward_B, group_B)[:need]
    return torch.isin(group_B, torch.tensor(keep, dtype=group_B.dtype))


def next_round_prompts(missing: int, *, kept: int, sampled: int, cap: int) -> int:
    """Prompts to sample next: the missing groups divided by the keep rate seen so far, within [missing, cap].

    >>> next_round_prompts(2, kept=6, sampled=8, cap=8)   # keep rate 3/4: ceil(2 / 0.75) = 3
    3
    >>> next_round_prompts(2, kept=0, sampled=8, cap=8)   # nothing kept yet: a full round
    8
    """
    if kept <= 0:
        return cap
    return max(missing, min(cap, math.ceil(missing * sampled / kept)))


def mask_rows(mask_BT: torch.Tensor, drop_B: torch.Tensor) -> torch.Tensor:
    """``mask_BT`` with the rows where ``drop_B`` is True zeroed (overlong filtering).

    >>> mask_rows(torch.ones(2, 3), torch.tensor([False, True])).tolist()
    [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    return mask_BT * (~drop_B.to(mask_BT.device)).unsqueeze(-1).to(mask_BT.dtype)


@dataclass
class CollectedGroups:
    """Every completion sampled in a step (all rounds) and which rows the step trains on."""

    batch: RolloutBatch
    """Every sampled completion, rounds in order, each group's completions together."""
    scores: RewardScores
    """Their reward verdicts, rows as ``batch``."""
    reward_B: torch.Tensor
    """Their total rewards (NaN = no total: a weighted reward abstained or failed, ``rewards.scoring``)."""
    keep_B: torch.Tensor
    """bool: the rows of the groups the step trains on (all of them without dynamic sampling)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The collection's metrics, with their reductions over processes declared (``core.metrics``)."""

    @property
    def kept(self) -> RolloutBatch:
        return RolloutBatch([c for c, k in zip(self.batch.completions, self.keep_B.tolist(), strict=True) if k])


def collect_groups(
    generate: Callable[[int], RolloutBatch],
    score: Callable[[RolloutBatch], tuple[RewardScores, torch.Tensor]],
    *,
    prompts: int,
    dynamic: bool,
    max_rounds: int,
) -> CollectedGroups:
    """Sample ``prompts`` groups (one round) or, with ``dynamic``, keep sampling until that many informative groups.

    ``generate(n)`` samples n prompts' groups with run-unique group ids; ``score(batch)`` returns its scores and
    ``reward_B`` (NaN = abstained). Metrics: ``time/generate``, ``time/reward`` and, with ``dynamic``,
    ``dynamic_sampling/{rounds,dropped_groups,surplus_groups,missing_groups}``.
    """
    batches, scores, rewards = [], [], []
    t_gen = t_rew = 0.0
    n, rounds, kept = prompts, 0, 0
    while True:
        t0 = time.time()
        b = generate(n)
        t1 = time.time()
        sc, r = score(b)
        t_gen, t_rew = t_gen + t1 - t0, t_rew + time.time() - t1
        batches.append(b)
        scores.append(sc)
        rewards.append(r)
        rounds += 1
        if not dynamic:
            break
        batch = RolloutBatch([c for x in batches for c in x.completions])
        kept = len(informative_groups(torch.cat(rewards), torch.tensor(batch.group_ids)))
        sampled = len(set(batch.group_ids))
        if kept >= prompts or rounds >= max_rounds:
            break
        n = next_round_prompts(prompts - kept, kept=kept, sampled=sampled, cap=prompts)
    batch = RolloutBatch([c for x in batches for c in x.completions])
    reward_B, group_B = torch.cat(rewards), torch.tensor(batch.group_ids)
    metrics: dict[str, Any] = {"time/generate": Max(t_gen), "time/reward": Max(t_rew)}  # the slowest process
    if not dynamic:
        return CollectedGroups(batch, scores[0], reward_B, torch.ones_like(group_B, dtype=torch.bool), metrics)
    keep_B = select_groups(reward_B, group_B, need=prompts)
    if not keep_B.any():  # nothing informative at all: train on everything (zero advantages, as without filtering)
        keep_B = torch.ones_like(keep_B)
    sampled = len(set(batch.group_ids))
    metrics.update(
        {
            "dynamic_sampling/rounds": rounds,
            "dynamic_sampling/dropped_groups": sampled - kept,
            "dynamic_sampling/surplus_groups": max(kept - prompts, 0),
            "dynamic_sampling/missing_groups": max(prompts - kept, 0),
        }
    )
    return CollectedGroups(batch, RewardScores.concat(scores), reward_B, keep_B, metrics)
