"""Routing statistics as pure tensor functions: expert-set flips, expert load, balance, load-balancing loss.

Shapes: N routed tokens (batch * sequence, flattened as the router sees them), K experts per token, E experts.
``mask_N`` is 1 for real tokens (prompt or completion) and 0 for padding; padding never counts.
"""

from __future__ import annotations

import math

import torch


def expert_sets_differ(a_NK: torch.Tensor, b_NK: torch.Tensor) -> torch.Tensor:
    """bool_N: True where the *sets* of chosen experts differ (order within the top-k does not matter).

    >>> expert_sets_differ(torch.tensor([[0, 3], [1, 2], [4, 5]]), torch.tensor([[3, 0], [1, 5], [4, 5]]))
    tensor([False,  True, False])
    """
    return (a_NK.sort(-1).values != b_NK.sort(-1).values).any(-1)


def flip_counts(before_NK: torch.Tensor, after_NK: torch.Tensor, mask_N: torch.Tensor) -> tuple[int, int]:
    """(real tokens whose expert set changed, real tokens compared).

    >>> flip_counts(torch.tensor([[0, 1], [2, 3], [4, 5]]), torch.tensor([[1, 0], [2, 6], [7, 5]]),
    ...             torch.tensor([1, 1, 0]))
    (1, 2)
    """
    m = mask_N.bool()
    return int((expert_sets_differ(before_NK, after_NK) & m).sum()), int(m.sum())


def expert_counts(idx_NK: torch.Tensor, mask_N: torch.Tensor, num_experts: int) -> torch.Tensor:
    """float64 counts_E of (real token, slot) assignments per expert.

    >>> expert_counts(torch.tensor([[0, 1], [1, 2], [3, 3]]), torch.tensor([1, 1, 0]), 4)
    tensor([1., 2., 1., 0.], dtype=torch.float64)
    """
    w = mask_N.to(torch.float64).unsqueeze(-1).expand_as(idx_NK).reshape(-1)
    return torch.zeros(num_experts, dtype=torch.float64, device=idx_NK.device).index_add_(0, idx_NK.reshape(-1), w)


def load_max_over_mean(counts_E: torch.Tensor) -> float:
    """Busiest expert's load over the mean load: 1.0 is perfect balance, E means one expert takes everything.

    >>> load_max_over_mean(torch.tensor([3.0, 1.0, 0.0, 0.0]))
    3.0
    """
    mean = counts_E.double().mean()
    return float(counts_E.max() / mean) if mean > 0 else math.nan


def load_entropy(counts_E: torch.Tensor) -> float:
    """Entropy of the load distribution divided by ``log E``: 1.0 = uniform, 0.0 = a single expert.

    >>> round(load_entropy(torch.tensor([1.0, 1.0, 0.0, 0.0])), 4)  # log 2 / log 4
    0.5
    """
    total = counts_E.double().sum()
    if total <= 0 or counts_E.numel() < 2:
        return math.nan
    p = counts_E.double() / total
    h = -(p * torch.log(p.clamp(min=1e-300))).sum()
    return float(h / math.log(counts_E.numel()))


def load_balancing_loss(probs_NE: torch.Tensor, idx_NK: torch.Tensor, mask_N: torch.Tensor) -> torch.Tensor:
    """Switch Transformer balance loss (Fedus et al. 2021, eq. 4-6) over real tokens: ``E * sum_e f_e * P_e``.

    ``f_e``: share of real tokens dispatched to expert e (summed over the K slots, so sum_e f_e = K), ``P_e``: mean
    router probability of e. Differentiable through ``probs_NE`` only. Perfect balance gives K (transformers'
    ``load_balancing_loss_func`` convention, which this equals for one layer); an empty mask gives 0.

    >>> probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    >>> load_balancing_loss(probs, torch.tensor([[0], [0]]), torch.tensor([1, 1]))  # 2 * (1.0 * 0.7 + 0 * 0.3)
    tensor(1.4000)
    """
    E = probs_NE.shape[-1]
    m_N = mask_N.to(probs_NE.dtype)
    n = m_N.sum().clamp(min=1)
    f_E = expert_counts(idx_NK, mask_N, E).to(probs_NE.dtype) / n
    P_E = (probs_NE * m_N.unsqueeze(-1)).sum(0) / n
    return E * (f_E * P_E).sum()
