"""Policy losses: tensors in, ``(loss, metrics)`` out. Selected by name (``algorithm.loss``).

Every loss takes the same arguments::

    logp_BT      log pi_theta(token) of the current policy (requires grad)
    old_logp_BT  log pi_old(token) from the policy that sampled the batch (no grad)
    adv_B        one advantage per completion
    mask_BT      1 for real completion tokens, 0 for padding
    kl_BT        optional per-token KL to the reference, added with weight ``beta`` before aggregation
    clip_low / clip_high   ratio clip range [1 - clip_low, 1 + clip_high] (DAPO's "clip-higher")
    max_len      constant normaliser for Dr. GRPO (the max completion length of the recipe)

Values at masked positions never reach the result: inputs are zeroed there before any arithmetic, so padding
holding NaN or huge numbers changes neither the loss nor its gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.registry import Registry

LossOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]
LOSSES: Registry[Callable[..., LossOutput]] = Registry("loss")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over ``mask == 1`` entries; 0 (not NaN) when the mask is empty."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim) / mask.sum(dim).clamp(min=1)


def aggregate(loss_BT: torch.Tensor, mask_BT: torch.Tensor, mode: str, *, max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token losses to a scalar.

    seq_mean_token_mean     GRPO: mean over each sequence's tokens, then over sequences (long answers count less
                            per token; Dr. GRPO's "length bias").
    token_mean              DAPO eq. 8: every token of the batch weighs the same.
    seq_mean_token_sum_norm Dr. GRPO: sum over tokens / max_len, mean over sequences (a constant normaliser).
    Sequences with an empty mask count as rows of zeros (never NaN).
    """
    if mode == "seq_mean_token_mean":
        return masked_mean(loss_BT, mask_BT, dim=-1).mean() if loss_BT.shape[0] else loss_BT.sum()
    if mode == "token_mean":
        return masked_mean(loss_BT, mask_BT)
    if mode == "seq_mean_token_sum_norm":
        if not max_len or max_len <= 0:
            raise ValueError("max_len: seq_mean_token_sum_norm needs the recipe's max completion length (> 0)")
        summed_B = torch.where(mask_BT.bool(), loss_BT, torch.zeros_like(loss_BT)).sum(-1)
        return summed_B.sum() / (max(loss_BT.shape[0], 1) * max_len)
    raise ValueError(f"aggregation {mode!r} is not one of {AGGREGATIONS}")


def _clean(mask_BT: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    m = mask_BT.bool()
    return [None if t is None else torch.where(m, t, torch.zeros_like(t)) for t in tensors]


def clipped_surrogate(
    logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, adv_B: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO/GRPO token loss ``-min(r A, clip(r, 1-cl, 1+ch) A)`` with ``r = exp(logp - old_logp)``.

    Returns (loss_BT, ratio_BT, clipped_BT) where ``clipped_BT`` marks tokens whose gradient the clip removed.
    """
    ratio_BT = torch.exp(logp_BT - old_logp_BT)
    adv_BT = adv_B.unsqueeze(-1)
    unclipped = ratio_BT * adv_BT
    clipped = torch.clamp(ratio_BT, 1 - clip_low, 1 + clip_high) * adv_BT
    loss_BT = -torch.minimum(unclipped, clipped)
    return loss_BT, ratio_BT, (clipped < unclipped)


def _token_level_loss(agg: str) -> Callable[..., LossOutput]:
    def loss_fn(
        logp_BT: torch.Tensor,
        old_logp_BT: torch.Tensor,
        adv_B: torch.Tensor,
        mask_BT: torch.Tensor,
        *,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        kl_BT: torch.Tensor | None = None,
        beta: float = 0.0,
        max_len: int | None = None,
    ) -> LossOutput:
        logp_BT, old_logp_BT, kl_BT = _clean(mask_BT, logp_BT, old_logp_BT, kl_BT)
        loss_BT, ratio_BT, clipped_BT = clipped_surrogate(logp_BT, old_logp_BT, adv_B, clip_low, clip_high)
        if kl_BT is not None and beta:
            loss_BT = loss_BT + beta * kl_BT
        loss = aggregate(loss_BT, mask_BT, agg, max_len=max_len)
        return loss, _token_metrics(ratio_BT, clipped_BT, mask_BT, kl_BT)

    loss_fn.__doc__ = f"Clipped token-level surrogate aggregated as {agg!r}."
    return loss_fn


def _token_metrics(ratio_BT, clipped_BT, mask_BT, kl_BT) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        m = {"clip_frac": masked_mean(clipped_BT.float(), mask_BT), "ratio_mean": masked_mean(ratio_BT, mask_BT)}
        if kl_BT is not None:
            m["kl"] = masked_mean(kl_BT, mask_BT)
    return m


LOSSES.add("grpo", _token_level_loss("seq_mean_token_mean"))
LOSSES.add("dapo", _token_level_loss("token_mean"))
LOSSES.add("dr_grpo", _token_level_loss("seq_mean_token_sum_norm"))


def normaliser(loss_name: str) -> str:
    """What a loss averages over: "tokens" (token-mean losses) or "rows" (per-sequence means, constant sums).

    Gradient accumulation weighs each micro-batch's loss by its share of that unit in the mini-batch, so that
    accumulated gradients equal those of the whole mini-batch.
    """
    return "tokens" if loss_name in TOKEN_MEAN_LOSSES else "rows"


TOKEN_MEAN_LOSSES = frozenset({"dapo", "cispo"})


def _sequence_log_ratio(logp_BT, old_logp_BT, mask_BT) -> torch.Tensor:
    """GSPO eq. 7: log s_i = mean_t (logp - old_logp), the length-normalised sequence log ratio."""
    return masked_mean(logp_BT - old_logp_BT, mask_BT, dim=-1)


@LOSSES.register("gspo")
def gspo_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, clip_low=3e-4, clip_high=4e-4, kl_BT=None, beta=0.0, max_len=None
) -> LossOutput:
    """GSPO (Zheng et al. 2025, eq. 5-7): one importance ratio per sequence, clipped per sequence.

    ``s_i = exp(mean_t(logp - old_logp))``; loss ``-mean_i min(s_i A_i, clip(s_i, 1-cl, 1+ch) A_i)``. The paper's
    clip range is ~1e-3 of GRPO's (3e-4 / 4e-4), because a sequence ratio is an average of token log ratios.
    """
    logp_BT, old_logp_BT, kl_BT = _clean(mask_BT, logp_BT, old_logp_BT, kl_BT)
    s_B = torch.exp(_sequence_log_ratio(logp_BT, old_logp_BT, mask_BT))
    unclipped = s_B * adv_B
    clipped = torch.clamp(s_B, 1 - clip_low, 1 + clip_high) * adv_B
    has_tokens = (mask_BT.sum(-1) > 0).float()  # a sequence with no tokens is a row of zeros, as in GRPO's mean
    loss = -(torch.minimum(unclipped, clipped) * has_tokens).mean() if s_B.numel() else s_B.sum()
    if kl_BT is not None and beta:
        loss = loss + beta * aggregate(kl_BT, mask_BT, "seq_mean_token_mean")
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((clipped < unclipped).float(), has_tokens),
            "ratio_mean": masked_mean(s_B, has_tokens),
        }
        if kl_BT is not None:
            metrics["kl"] = masked_mean(kl_BT, mask_BT)
    return loss, metrics


@LOSSES.register("gspo_token")
def gspo_token_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, clip_low=3e-4, clip_high=4e-4, kl_BT=None, beta=0.0, max_len=None
) -> LossOutput:
    """GSPO-token (eq. 13-14): ``s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)]`` - the value of ``s_i`` on every token but a
    per-token gradient, so per-token advantages are possible. Equals ``gspo`` when advantages are uniform per sequence.
    """
    logp_BT, old_logp_BT, kl_BT = _clean(mask_BT, logp_BT, old_logp_BT, kl_BT)
    log_s_B = _sequence_log_ratio(logp_BT, old_logp_BT, mask_BT).detach()
    s_BT = torch.exp(log_s_B.unsqueeze(-1) + logp_BT - logp_BT.detach())
    adv_BT = adv_B.unsqueeze(-1)
    unclipped = s_BT * adv_BT
    clipped = torch.clamp(s_BT, 1 - clip_low, 1 + clip_high) * adv_BT
    loss_BT = -torch.minimum(unclipped, clipped)
    if kl_BT is not None and beta:
        loss_BT = loss_BT + beta * kl_BT
    loss = aggregate(loss_BT, mask_BT, "seq_mean_token_mean")
    return loss, _token_metrics(s_BT, clipped < unclipped, mask_BT, kl_BT)


@LOSSES.register("cispo")
def cispo_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, clip_low=1.0, clip_high=4.0, kl_BT=None, beta=0.0, max_len=None
) -> LossOutput:
    """CISPO (MiniMax-M1, eq. 4-5): REINFORCE with a clipped, stop-gradient importance weight on every token,
    ``-sg(clip(r, 1-cl, 1+ch)) * A * logp``, token-mean. No token's gradient is dropped, only re-weighted.
    MiniMax-M1 sets no lower bound in practice (``clip_low=1.0`` makes it 0) and a large upper one.
    """
    logp_BT, old_logp_BT, kl_BT = _clean(mask_BT, logp_BT, old_logp_BT, kl_BT)
    ratio_BT = torch.exp(logp_BT - old_logp_BT)
    weight_BT = torch.clamp(ratio_BT, 1 - clip_low, 1 + clip_high).detach()
    loss_BT = -weight_BT * adv_B.unsqueeze(-1) * logp_BT
    if kl_BT is not None and beta:
        loss_BT = loss_BT + beta * kl_BT
    loss = aggregate(loss_BT, mask_BT, "token_mean")
    return loss, _token_metrics(ratio_BT, weight_BT != ratio_BT, mask_BT, kl_BT)
