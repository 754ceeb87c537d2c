"""Learning-rate schedules by name (``training.lr_schedule``): linear warmup, then a decay over the run.

A schedule maps ``frac``, the share of the post-warmup updates done (0 -> 1), to a multiplier of the peak LR.

Ours and not ``transformers.get_scheduler``: measured with warmup 2 over 6 updates, transformers gives
[0.0, 0.5, 1.0, ...] (warmup ``u / warmup``: the first update runs at LR 0, a wasted rollout batch in RL) where we
give [0.5, 1.0, 1.0, ...] (``(u + 1) / warmup``), and its cosine rises again past the last update (0.0 then
0.1464 at u = 7) where ours stays at 0. Switching would change every warmed-up run's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from core.registry import Registry

SCHEDULES: Registry[Callable[[float], float]] = Registry("lr schedule")


@SCHEDULES.register("constant")
def constant(frac: float) -> float:
    return 1.0


@SCHEDULES.register("cosine")
def cosine(frac: float) -> float:
    """Half a cosine from 1 to 0 (Loshchilov & Hutter 2017, without restarts)."""
    return 0.5 * (1 + math.cos(math.pi * frac))


@SCHEDULES.register("linear")
def linear(frac: float) -> float:
    return 1.0 - frac


def lr_multiplier(update: int, *, schedule: str, warmup_steps: int, total_updates: int) -> float:
    """Multiplier of the peak LR for optimizer update ``update`` (0-based).

    >>> [lr_multiplier(u, schedule="linear", warmup_steps=2, total_updates=6) for u in range(7)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    decay = SCHEDULES.get(schedule)
    if warmup_steps and update < warmup_steps:
        return (update + 1) / warmup_steps
    frac = min(max(update - warmup_steps, 0) / max(total_updates - warmup_steps, 1), 1.0)
    return decay(frac)


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: str, warmup_steps: int, total_updates: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A ``LambdaLR`` stepping ``lr_multiplier``; call ``.step()`` once per optimizer update.

    Not for ``accelerator.prepare``: accelerate would step it once per process."""
    SCHEDULES.get(schedule)  # an unknown name fails here, not at the first step

    # A plain function (not a partial or a callable object): LambdaLR's state_dict stores no state for it, as before.
    def multiplier(update: int) -> float:
        return lr_multiplier(update, schedule=schedule, warmup_steps=warmup_steps, total_updates=total_updates)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
