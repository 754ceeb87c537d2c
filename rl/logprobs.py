"""Per-token log-probabilities of completion tokens under a model (the training forward)."""

from __future__ import annotations

import torch

from rollouts.records import SequenceTensors


def token_logprobs(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)[ids]`` in float32, without materialising the full log-softmax.

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    >>> token_logprobs(logits, torch.tensor([[1, 0]])).round(decimals=4)
    tensor([[-0.6931, -0.1269]])
    """
    logits = logits_BTV.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, ids_BT.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def completion_logprobs(
    model: torch.nn.Module, seq: SequenceTensors, *, temperature: float = 1.0, **forward_kwargs
) -> tuple[torch.Tensor, object]:
    """``logp_BT`` of the completion tokens in ``seq`` (0 at padding) and the raw model output.

    Only the last T+1 positions' logits are computed (``logits_to_keep``): the prompt's vocabulary logits are
    never materialised. Logits are divided by the sampling temperature so that importance ratios compare the
    distribution the tokens were actually drawn from (as TRL does).
    """
    T = seq.completion_ids_BT.shape[1]
    out = model(
        input_ids=seq.input_ids_BL,
        attention_mask=seq.attention_mask_BL,
        position_ids=seq.position_ids_BL,
        logits_to_keep=T + 1,
        use_cache=False,
        **forward_kwargs,
    )
    logits_BTV = out.logits[:, -(T + 1) : -1]  # position j predicts token j+1
    logp_BT = token_logprobs(logits_BTV, seq.completion_ids_BT, temperature)
    return logp_BT * seq.completion_mask_BT, out
