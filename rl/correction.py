"""Rollout correction: importance weights for the mismatch between the rollout engine and the training forward.

A fast rollout engine (vLLM) samples completions with its own kernels, precision and, on MoE, its own expert
routing, so the probability it gave a sampled token, ``pi_rollout(y_t)`` ("rollout log-probs"), differs from the
one the training model computes for the same weights, ``pi_train(y_t)`` ("old log-probs"). The batch is then
off-policy for the model being trained, however fresh the weights (Yao et al. 2025, "Your efficient RL framework
secretly brings you off-policy RL training"). Weighting each term of the loss by ``ratio = pi_train / pi_rollout``
corrects for it; the raw ratio has unbounded variance, so it is bounded in one of two modes (``CORRECTIONS``):

* ``tis`` - truncated importance sampling (Yao et al. 2025): ``weight = min(ratio, cap)``.
* ``mis`` - masked importance sampling (verl's rollout correction, TRL's ``vllm_importance_sampling_mode`` =
  ``token_mask`` / ``sequence_mask``): ``weight = ratio`` where ``ratio <= cap``, else 0 - the unit is dropped.
* ``none`` - weight 1; the mismatch metrics are still computed (they are diagnostics).

and at one of two levels:

* ``token`` - one ratio per token, ``log r_BT = old - rollout``.
* ``sequence`` - one ratio per completion, the product of its token ratios (as TRL's ``sequence_*`` modes; not a
  mean), ``log r_B = sum_t (old - rollout)``, the same weight on every token of the row.

Logs are clamped to [-20, 20] before ``exp``, so a long sequence (or an engine's -inf) never gives inf or NaN.
A NaN rollout log-prob at a real token (an engine that could not score it) gives log ratio 0 there: ratio 1, no
correction, as TRL does. Padding (``mask_BT == 0``) is zeroed before any arithmetic, so NaN or huge values there
change no output, and the weight is 0 there (the losses ignore it anyway).

The weight is detached: it re-weights samples drawn from the wrong distribution, a constant per sample as the
behaviour-policy ratio of off-policy policy gradients, so the gradient flows only through the loss's own
``logp_BT``. ``old_logp_BT`` comes from a no-grad forward anyway; detaching makes sure a caller that passes a
grad-carrying tensor cannot change the estimator. The losses take the weight as their ``rollout_weight_BT`` option
(``rl/losses.py``) and multiply each token's policy term by it before the KL term is added, as TRL does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from core.registry import Registry
from rl.losses import masked_mean

LOG_RATIO_CLAMP = 20.0
"""|log ratio| bound applied before ``exp`` (at the chosen level): exp(20) ~ 4.9e8, finite in float32."""

CorrectionFn = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
"""``(ratio_U, cap) -> (weight_U, corrected_U)``: U = the units (tokens or rows); ``corrected_U`` marks the units
whose weight the correction changed (clipped or dropped)."""

CORRECTIONS: Registry[CorrectionFn] = Registry("rollout correction")


@CORRECTIONS.register("none")
def no_correction(ratio_U: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight 1 everywhere, nothing corrected."""
    return torch.ones_like(ratio_U), torch.zeros_like(ratio_U, dtype=torch.bool)


@CORRECTIONS.register("tis")
def truncated_is(ratio_U: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TIS (Yao et al. 2025): ``min(ratio, cap)``; biased, bounded variance."""
    return ratio_U.clamp(max=cap), ratio_U > cap


@CORRECTIONS.register("mis")
def masked_is(ratio_U: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MIS (verl, TRL ``*_mask``): ``ratio`` where ``ratio <= cap``, else 0 (the token or row is dropped)."""
    keep_U = ratio_U <= cap
    return torch.where(keep_U, ratio_U, torch.zeros_like(ratio_U)), ~keep_U


def _token_log_ratio(old_logp_BT: torch.Tensor, rollout_logp_BT: torch.Tensor, real_BT: torch.Tensor) -> torch.Tensor:
    """``old - rollout`` in float32: 0 at padding and where the rollout log-prob is NaN; clamped to +-20."""
    zeros = torch.zeros(real_BT.shape, dtype=torch.float32, device=real_BT.device)
    old = torch.where(real_BT, old_logp_BT.detach().float(), zeros)
    rollout = torch.where(real_BT, rollout_logp_BT.detach().float(), zeros)
    rollout = torch.where(torch.isnan(rollout), old, rollout)  # engine could not score the token: ratio 1
    return (old - rollout).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _token_level(log_r_BT: torch.Tensor, real_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return log_r_BT, real_BT


def _sequence_level(log_r_BT: torch.Tensor, real_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # A product of token ratios (padding already holds 0), kept [B, 1] so it broadcasts over the row's tokens.
    return log_r_BT.sum(-1, keepdim=True).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), real_BT.any(-1, keepdim=True)


_LEVELS = {"token": _token_level, "sequence": _sequence_level}
"""level -> ``(log_r_BT, real_BT) -> (log ratio of each unit, which units are real)``: [B, T] or [B, 1]."""
LEVELS = tuple(_LEVELS)


def rollout_correction(
    old_logp_BT: torch.Tensor,
    rollout_logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    mode: str,
    level: str,
    cap: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The detached per-token weight [B, T] (float32, 0 at padding) and the mismatch metrics.

    Metrics (0-dim float tensors, no grad; 0, never NaN, on an empty mask):

    * ``mismatch/kl``: KL(rollout || train) on the sampled tokens, k3 estimator ``r - 1 - log r`` with the token
      ratio ``r = exp(old - rollout)``, mean over real tokens (>= 0).
    * ``mismatch/max_ratio``: the largest ratio at ``level`` (before the correction) over real tokens or rows;
      0.0 on an empty mask, the identity of ``max``, so a max over micro-batches ignores an empty one.
    * ``mismatch/frac_corrected``: share of units (real tokens, or rows with a real token) whose weight the
      correction changed (clipped or dropped); 0 for ``none``.
    * ``mismatch/abs_diff``: mean |old - rollout| over real tokens (verl's log-prob diff).

    Ratios 2, 0.5 and 3 with cap 2: TIS truncates the third token, MIS drops it.

    >>> import math
    >>> old = torch.tensor([[math.log(0.5), math.log(0.2), math.log(0.9)]])
    >>> rollout = torch.tensor([[math.log(0.25), math.log(0.4), math.log(0.3)]])
    >>> w, m = rollout_correction(old, rollout, torch.ones(1, 3), mode="tis", level="token", cap=2.0)
    >>> w, m["mismatch/max_ratio"], m["mismatch/frac_corrected"]
    (tensor([[2.0000, 0.5000, 2.0000]]), tensor(3.), tensor(0.3333))
    >>> rollout_correction(old, rollout, torch.ones(1, 3), mode="mis", level="token", cap=2.0)[0]
    tensor([[2.0000, 0.5000, 0.0000]])
    """
    if not cap > 0:
        raise ValueError(f"algorithm.rollout_correction.cap: must be > 0, got {cap}")
    if level not in _LEVELS:
        raise ValueError(f"algorithm.rollout_correction.level: unknown {level!r}; known: {', '.join(LEVELS)}")
    correct = CORRECTIONS.get(mode)
    if not (old_logp_BT.shape == rollout_logp_BT.shape == mask_BT.shape) or mask_BT.dim() != 2:
        raise ValueError(
            f"rollout_correction: old_logp_BT {tuple(old_logp_BT.shape)}, rollout_logp_BT "
            f"{tuple(rollout_logp_BT.shape)} and mask_BT {tuple(mask_BT.shape)} must be the same [B, T] shape"
        )
    with torch.no_grad():
        real_BT = mask_BT.bool()
        log_r_BT = _token_log_ratio(old_logp_BT, rollout_logp_BT, real_BT)
        log_r_U, real_U = _LEVELS[level](log_r_BT, real_BT)
        ratio_U = torch.where(real_U, torch.exp(log_r_U), torch.zeros_like(log_r_U))
        weight_U, corrected_U = correct(ratio_U, cap)
        weight_BT = torch.where(real_BT, weight_U, torch.zeros_like(log_r_BT))  # [B, 1] broadcasts on a row
        metrics = {
            "mismatch/kl": masked_mean(torch.expm1(log_r_BT) - log_r_BT, real_BT),  # k3; expm1: exact near 0
            "mismatch/max_ratio": ratio_U.max() if ratio_U.numel() else ratio_U.new_zeros(()),  # 0 off real_U
            "mismatch/frac_corrected": masked_mean(corrected_U.float(), real_U),
            "mismatch/abs_diff": masked_mean(log_r_BT.abs(), real_BT),
        }
    return weight_BT, metrics


def rollout_logp_tensor(logprobs: Sequence[Sequence[float] | None], T: int) -> torch.Tensor | None:
    """The engine's per-token log-probs of the sampled tokens as [B, T] float32, right-padded with 0.0; None when
    any row has none (the engine returned no log-probs). NaN values (tokens it could not score) are kept.

    >>> rollout_logp_tensor([[-0.5, -1.0], [-2.0]], 3)
    tensor([[-0.5000, -1.0000,  0.0000],
            [-2.0000,  0.0000,  0.0000]])
    >>> rollout_logp_tensor([[-0.5], None], 3) is None
    True
    """
    if any(row is None for row in logprobs):
        return None
    out_BT = torch.zeros(len(logprobs), T, dtype=torch.float32)
    for i, row in enumerate(logprobs):
        if len(row) > T:
            raise ValueError(f"rollout log-probs of row {i}: {len(row)} values for at most T={T} completion tokens")
        out_BT[i, : len(row)] = torch.tensor(list(row), dtype=torch.float32)
    return out_BT
