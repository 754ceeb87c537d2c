"""Policy losses: tensors in, ``(loss, metrics)`` out. Selected by name (``algorithm.loss``).

Every loss is a ``PolicyLoss`` in ``LOSSES`` and is called the same way (checked when it registers)::

    loss(logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT=None, beta=0.0, max_len=None, **options)

    logp_BT      log pi_theta(token) of the current policy (requires grad)
    old_logp_BT  log pi_old(token) from the policy that sampled the batch (no grad)
    adv_B        one advantage per completion
    mask_BT      1 for real completion tokens, 0 for padding
    kl_BT        optional per-token KL to the reference, added with weight ``beta``
    max_len      the recipe's max completion length (Dr. GRPO's constant normaliser; the others ignore it)
    options      the keywords the loss declares (``PolicyLoss.options``), e.g. ``clip_low`` / ``clip_high``: the
                 ratio clip range [1 - clip_low, 1 + clip_high] (DAPO's "clip-higher"); None or absent = the
                 loss's ``default_clip``; an option it does not declare is a TypeError naming it
    rollout_weight_BT  an option of every built-in loss: a detached per-token weight (``rl.correction``'s TIS / MIS
                 rollout-correction weight). Each token's policy term is multiplied by it before ``beta * kl_BT``
                 is added, as TRL does (``gspo``: each row's term by the mean of the weight over the row's real
                 tokens, which is the sequence-level weight when that is constant on the row). None or absent =
                 weight 1, bit-identical to no weight. The trainer passes it only when a correction is on;
                 ``PolicyLoss.takes_rollout_weight`` says whether a loss accepts it.

The object also tells the trainer what it must know: ``normaliser`` (what the loss averages over, which decides
how gradient accumulation weighs micro-batches) and ``default_clip``.

Values at masked positions never reach the result: inputs are zeroed there before any arithmetic, so padding
holding NaN or huge numbers changes neither the loss nor its gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from core.registry import Registry, check_signature

LossOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]
Normaliser = Literal["tokens", "rows"]
LOSS_POSITIONAL = ("logp_BT", "old_logp_BT", "adv_B", "mask_BT")
"""The positional arguments of every loss function, in this order."""
LOSS_KEYWORDS = ("kl_BT", "beta", "max_len")
"""The keywords every loss function takes besides its declared options (the trainer always passes them)."""
CLIP_OPTIONS = ("clip_low", "clip_high")
ROLLOUT_WEIGHT = "rollout_weight_BT"
"""The rollout-correction option; an option, not in ``LOSS_KEYWORDS``, so user-registered losses need not take it."""


@dataclass(frozen=True)
class PolicyLoss:
    """A policy loss and what the trainer must know about it. Call it as the module docstring says."""

    name: str
    fn: Callable[..., LossOutput]
    """Takes ``LOSS_POSITIONAL``, then exactly the keywords ``LOSS_KEYWORDS`` + ``options``."""
    normaliser: Normaliser
    """``tokens``: a mean over every real token of the batch (accumulation weighs a micro-batch by its share of
    the mini-batch's tokens); ``rows``: a mean over sequences (weighted by its share of the rows)."""
    default_clip: tuple[float, float] | None
    """(clip_low, clip_high) used when the recipe sets none; None: the loss has no ratio clip."""
    options: frozenset[str] = frozenset()
    """Keywords beyond ``LOSS_KEYWORDS`` the loss accepts; ``clip_low``/``clip_high`` exactly when it clips."""

    def __post_init__(self) -> None:
        if self.normaliser not in ("tokens", "rows"):
            raise ValueError(f"loss {self.name!r}: normaliser must be 'tokens' or 'rows', got {self.normaliser!r}")
        if (self.default_clip is not None) != (set(CLIP_OPTIONS) <= self.options):
            raise ValueError(f"loss {self.name!r}: declare default_clip exactly when clip_low/clip_high are options")
        check_signature(f"loss {self.name!r}", self.fn, LOSS_POSITIONAL, set(LOSS_KEYWORDS) | self.options)
        # As functools.wraps: the registry's same-definition test, doctest and help() see the function.
        object.__setattr__(self, "__wrapped__", self.fn)
        object.__setattr__(self, "__doc__", self.fn.__doc__)

    @property
    def takes_rollout_weight(self) -> bool:
        """Whether the loss accepts the rollout-correction weight (``rollout_weight_BT``)."""
        return ROLLOUT_WEIGHT in self.options

    def resolve(self, **options: Any) -> dict[str, Any]:
        """The options to call ``fn`` with: those given (None = the default) over the defaults.

        >>> LOSSES.get("dapo").resolve(clip_high=0.28, clip_low=None)
        {'clip_low': 0.2, 'clip_high': 0.28}
        """
        given = {k: v for k, v in options.items() if v is not None}
        self.check_options(given)
        defaults = dict(zip(CLIP_OPTIONS, self.default_clip, strict=True)) if self.default_clip is not None else {}
        return {**defaults, **given}

    def check_options(self, names: Iterable[str]) -> None:
        unknown = sorted(set(names) - self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"loss {self.name!r} takes no option {unknown[0]!r}; its options: {known}")

    def __call__(
        self,
        logp_BT: torch.Tensor,
        old_logp_BT: torch.Tensor,
        adv_B: torch.Tensor,
        mask_BT: torch.Tensor,
        *,
        kl_BT: torch.Tensor | None = None,
        beta: float = 0.0,
        max_len: int | None = None,
        **options: Any,
    ) -> LossOutput:
        return self.fn(
            logp_BT, old_logp_BT, adv_B, mask_BT, kl_BT=kl_BT, beta=beta, max_len=max_len, **self.resolve(**options)
        )


LOSSES: Registry[PolicyLoss] = Registry("loss")


def policy_loss(
    name: str, *, normaliser: Normaliser, default_clip: tuple[float, float] | None, options: Iterable[str] = ()
) -> Callable[[Callable[..., LossOutput]], PolicyLoss]:
    """Register the decorated function in ``LOSSES`` as a ``PolicyLoss``; a clipping loss gets the clip options."""

    def deco(fn: Callable[..., LossOutput]) -> PolicyLoss:
        opts = frozenset(options) | (frozenset(CLIP_OPTIONS) if default_clip is not None else frozenset())
        return LOSSES.register(name)(PolicyLoss(name, fn, normaliser, default_clip, opts))

    return deco


# ------------------------------------------------------------------ aggregations
AGGREGATIONS: Registry[Callable[..., torch.Tensor]] = Registry("aggregation")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over ``mask == 1`` entries; 0 (not NaN) when the mask is empty."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim) / mask.sum(dim).clamp(min=1)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(loss_BT: torch.Tensor, mask_BT: torch.Tensor, *, max_len: int | None = None) -> torch.Tensor:
    """GRPO: mean over each sequence's tokens, then over sequences (long answers count less per token; Dr. GRPO's
    "length bias"). A sequence with an empty mask counts as a row of zeros."""
    return masked_mean(loss_BT, mask_BT, dim=-1).mean() if loss_BT.shape[0] else loss_BT.sum()


@AGGREGATIONS.register("token_mean")
def token_mean(loss_BT: torch.Tensor, mask_BT: torch.Tensor, *, max_len: int | None = None) -> torch.Tensor:
    """DAPO eq. 8: every token of the batch weighs the same."""
    return masked_mean(loss_BT, mask_BT)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    loss_BT: torch.Tensor, mask_BT: torch.Tensor, *, max_len: int | None = None
) -> torch.Tensor:
    """Dr. GRPO: sum over tokens / max_len, mean over sequences (a constant normaliser)."""
    if not max_len or max_len <= 0:
        raise ValueError("max_len: seq_mean_token_sum_norm needs the recipe's max completion length (> 0)")
    summed_B = torch.where(mask_BT.bool(), loss_BT, torch.zeros_like(loss_BT)).sum(-1)
    return summed_B.sum() / (max(loss_BT.shape[0], 1) * max_len)


def aggregate(loss_BT: torch.Tensor, mask_BT: torch.Tensor, mode: str, *, max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token losses to a scalar with the aggregation registered as ``mode`` (never NaN)."""
    return AGGREGATIONS.get(mode)(loss_BT, mask_BT, max_len=max_len)


# ------------------------------------------------------------------ losses
def _clean(mask_BT: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    m = mask_BT.bool()
    return [None if t is None else torch.where(m, t, torch.zeros_like(t)) for t in tensors]


def _rollout_weighted(term: torch.Tensor, rollout_weight: torch.Tensor | None) -> torch.Tensor:
    """A policy term ([B, T] or [B]) times the rollout-correction weight (a constant); itself when there is none."""
    return term if rollout_weight is None else term * rollout_weight.detach()


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


def _token_metrics(ratio_BT, clipped_BT, mask_BT, kl_BT) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        m = {"clip_frac": masked_mean(clipped_BT.float(), mask_BT), "ratio_mean": masked_mean(ratio_BT, mask_BT)}
        if kl_BT is not None:
            m["kl"] = masked_mean(kl_BT, mask_BT)
    return m


def _clipped_token_loss(
    logp_BT,
    old_logp_BT,
    adv_B,
    mask_BT,
    *,
    kl_BT,
    beta,
    clip_low,
    clip_high,
    aggregation,
    max_len=None,
    rollout_weight_BT=None,
) -> LossOutput:
    """The clipped token surrogate (times the rollout weight, + beta * KL per token), reduced by ``aggregation``."""
    logp_BT, old_logp_BT, kl_BT, w_BT = _clean(mask_BT, logp_BT, old_logp_BT, kl_BT, rollout_weight_BT)
    loss_BT, ratio_BT, clipped_BT = clipped_surrogate(logp_BT, old_logp_BT, adv_B, clip_low, clip_high)
    loss_BT = _rollout_weighted(loss_BT, w_BT)  # as TRL: the policy term only, before the KL term
    if kl_BT is not None and beta:
        loss_BT = loss_BT + beta * kl_BT
    return aggregation(loss_BT, mask_BT, max_len=max_len), _token_metrics(ratio_BT, clipped_BT, mask_BT, kl_BT)


@policy_loss("grpo", normaliser="rows", default_clip=(0.2, 0.2), options=(ROLLOUT_WEIGHT,))
def grpo_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len, clip_low, clip_high, rollout_weight_BT=None
) -> LossOutput:
    """GRPO (DeepSeekMath eq. 3): clipped token surrogate, aggregated as ``seq_mean_token_mean``."""
    return _clipped_token_loss(
        logp_BT,
        old_logp_BT,
        adv_B,
        mask_BT,
        kl_BT=kl_BT,
        beta=beta,
        clip_low=clip_low,
        clip_high=clip_high,
        rollout_weight_BT=rollout_weight_BT,
        aggregation=seq_mean_token_mean,
    )


@policy_loss("dapo", normaliser="tokens", default_clip=(0.2, 0.2), options=(ROLLOUT_WEIGHT,))
def dapo_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len, clip_low, clip_high, rollout_weight_BT=None
) -> LossOutput:
    """DAPO (eq. 8): clipped token surrogate, aggregated as ``token_mean``."""
    return _clipped_token_loss(
        logp_BT,
        old_logp_BT,
        adv_B,
        mask_BT,
        kl_BT=kl_BT,
        beta=beta,
        clip_low=clip_low,
        clip_high=clip_high,
        rollout_weight_BT=rollout_weight_BT,
        aggregation=token_mean,
    )


@policy_loss("dr_grpo", normaliser="rows", default_clip=(0.2, 0.2), options=(ROLLOUT_WEIGHT,))
def dr_grpo_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len, clip_low, clip_high, rollout_weight_BT=None
) -> LossOutput:
    """Dr. GRPO: clipped token surrogate, aggregated as ``seq_mean_token_sum_norm`` (needs ``max_len``)."""
    return _clipped_token_loss(
        logp_BT,
        old_logp_BT,
        adv_B,
        mask_BT,
        kl_BT=kl_BT,
        beta=beta,
        clip_low=clip_low,
        clip_high=clip_high,
        rollout_weight_BT=rollout_weight_BT,
        aggregation=seq_mean_token_sum_norm,
        max_len=max_len,
    )


def _sequence_log_ratio(logp_BT, old_logp_BT, mask_BT) -> torch.Tensor:
    """GSPO eq. 7: log s_i = mean_t (logp - old_logp), the length-normalised sequence log ratio."""
    return masked_mean(logp_BT - old_logp_BT, mask_BT, dim=-1)


@policy_loss("gspo", normaliser="rows", default_clip=(3e-4, 4e-4), options=(ROLLOUT_WEIGHT,))
def gspo_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len, clip_low, clip_high, rollout_weight_BT=None
) -> LossOutput:
    """GSPO (Zheng et al. 2025, eq. 5-7): one importance ratio per sequence, clipped per sequence.

    ``s_i = exp(mean_t(logp - old_logp))``; loss ``-mean_i min(s_i A_i, clip(s_i, 1-cl, 1+ch) A_i)``. The paper's
    clip range is ~1e-3 of GRPO's (3e-4 / 4e-4), because a sequence ratio is an average of token log ratios.

    A rollout weight multiplies each row's term by its mean over the row's real tokens (the sequence-level
    weight itself when it is constant on the row, as ``rl.correction`` gives at ``level: sequence``).
    """
    logp_BT, old_logp_BT, kl_BT, w_BT = _clean(mask_BT, logp_BT, old_logp_BT, kl_BT, rollout_weight_BT)
    s_B = torch.exp(_sequence_log_ratio(logp_BT, old_logp_BT, mask_BT))
    unclipped = s_B * adv_B
    clipped = torch.clamp(s_B, 1 - clip_low, 1 + clip_high) * adv_B
    has_tokens = (mask_BT.sum(-1) > 0).float()  # a sequence with no tokens is a row of zeros, as in GRPO's mean
    w_B = None if w_BT is None else masked_mean(w_BT, mask_BT, dim=-1)  # the row's mean weight
    term_B = _rollout_weighted(torch.minimum(unclipped, clipped), w_B)
    loss = -(term_B * has_tokens).mean() if s_B.numel() else s_B.sum()
    if kl_BT is not None and beta:
        loss = loss + beta * seq_mean_token_mean(kl_BT, mask_BT)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((clipped < unclipped).float(), has_tokens),
            "ratio_mean": masked_mean(s_B, has_tokens),
        }
        if kl_BT is not None:
            metrics["kl"] = masked_mean(kl_BT, mask_BT)
    return loss, metrics


@policy_loss("gspo_token", normaliser="rows", default_clip=(3e-4, 4e-4), options=(ROLLOUT_WEIGHT,))
def gspo_token_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len, clip_low, clip_high, rollout_weight_BT=None
) -> LossOutput:
    """GSPO-token (eq. 13-14): ``s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)]`` - the value of ``s_i`` on every token but a
    per-token gradient, so per-token advantages are possible. Equals ``gspo`` when advantages are uniform per sequence.
    """
    logp_BT, old_logp_BT, kl_BT, w_BT = _clean(mask_BT, logp_BT, old_logp_BT, kl_BT, rollout_weight_BT)
    log_s_B = _sequence_log_ratio(logp_BT, old_logp_BT, mask_BT).detach()
    s_BT = torch.exp(log_s_B.unsqueeze(-1) + logp_BT - logp_BT.detach())
    adv_BT = adv_B.unsqueeze(-1)
    unclipped = s_BT * adv_BT
    clipped = torch.clamp(s_BT, 1 - clip_low, 1 + clip_high) * adv_BT
    loss_BT = _rollout_weighted(-torch.minimum(unclipped, clipped), w_BT)
    if kl_BT is not None and beta:
        loss_BT = loss_BT + beta * kl_BT
    loss = seq_mean_token_mean(loss_BT, mask_BT)
    return loss, _token_metrics(s_BT, clipped < unclipped, mask_BT, kl_BT)


@policy_loss("cispo", normaliser="tokens", default_clip=(1.0, 4.0), options=(ROLLOUT_WEIGHT,))
def cispo_loss(
    logp_BT, old_logp_BT, adv_B, mask_BT, *, kl_BT, beta, max_len, clip_low, clip_high, rollout_weight_BT=None
) -> LossOutput:
    """CISPO (MiniMax-M1, eq. 4-5): REINFORCE with a clipped, stop-gradient importance weight on every token,
    ``-sg(clip(r, 1-cl, 1+ch)) * A * logp``, token-mean. No token's gradient is dropped, only re-weighted.
    MiniMax-M1 sets no lower bound in practice (``clip_low=1.0`` makes it 0) and a large upper one. A rollout
    weight ``w`` joins the stop-gradient factor: ``-sg(clip(r)) * w * A * logp``.
    """
    logp_BT, old_logp_BT, kl_BT, w_BT = _clean(mask_BT, logp_BT, old_logp_BT, kl_BT, rollout_weight_BT)
    ratio_BT = torch.exp(logp_BT - old_logp_BT)
    weight_BT = torch.clamp(ratio_BT, 1 - clip_low, 1 + clip_high).detach()
    loss_BT = -_rollout_weighted(weight_BT, w_BT) * adv_B.unsqueeze(-1) * logp_BT
    if kl_BT is not None and beta:
        loss_BT = loss_BT + beta * kl_BT
    loss = token_mean(loss_BT, mask_BT)
    return loss, _token_metrics(ratio_BT, weight_BT != ratio_BT, mask_BT, kl_BT)
