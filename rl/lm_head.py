"""Log-probabilities through the LM head without materialising [B, T, V] logits.

The model's forward runs with its output embedding standing in as the identity (``hidden_states_out``), so
``out.logits`` holds the final hidden states at the positions ``logits_to_keep`` selects: [.., H], not [.., V].
``head_logprobs`` then projects only the real completion tokens, in chunks of at most ``LOGITS_CHUNK_BYTES`` of
float32 logits, each chunk under activation checkpointing: its [c, V] logits are freed once its log-probs are taken
and recomputed, one chunk at a time, in backward. Peak memory for the head is a few chunks, whatever the completion
length or vocabulary (``benchmarks/memory.py``); the price is one more head matmul per token in backward.

A batch whose logits fit in one chunk takes the plain path (no checkpoint): the tiny recipes' 107-token vocabulary
never chunks. Models whose forward changes the logits after the head (Gemma's soft-capping, Cohere's or Granite's
logit scaling) keep their full logits: ``hidden_states_out`` yields None for them and the caller projects as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

LOGITS_CHUNK_BYTES = 64 * 2**20
"""Float32 logits per chunk (64 MiB: 164 tokens at a 102k vocabulary). Each chunk also holds its softmax in
backward, so the head's transient memory is a few times this; TRL's fused head tiles 4096 x 32768 (512 MiB)."""

# Config attributes with which a model's forward rescales or soft-caps the head's output (as TRL's fused head reads
# them): the hidden-state path would skip that, so such models keep their full logits.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


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


def token_entropy(logits_BTV: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits / temperature)`` at each position, float32, without gradient: a logged
    statistic, as TRL logs it, never part of the loss.

    >>> token_entropy(torch.tensor([[[0.0, 0.0], [100.0, 0.0]]])).round(decimals=4)
    tensor([[0.6931, 0.0000]])
    """
    with torch.no_grad():
        logits = logits_BTV.float() / temperature if temperature != 1.0 else logits_BTV.float()
        logp = torch.log_softmax(logits, dim=-1)
        return -(logp.exp() * logp).sum(-1)


def _causal_lm(model: torch.nn.Module) -> PreTrainedModel | None:
    """The transformers model inside DDP / peft wrappers (the first ``PreTrainedModel`` among the modules)."""
    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


@contextlib.contextmanager
def hidden_states_out(model: torch.nn.Module) -> Iterator[torch.nn.Module | None]:
    """Inside, ``model(...)`` returns the final hidden states as its ``logits``; yields the LM head (call it after
    leaving, on the hidden states, to get logits), or None where the model's logits are more than the head's output.

    The head's ``forward`` is shadowed on the instance, not replaced as a module: parameter names, DDP's buckets and
    peft's wrappers stay as they are."""
    lm = _causal_lm(model)
    head = lm.get_output_embeddings() if lm is not None else None
    text = lm.config.get_text_config() if lm is not None else None
    if head is None or any(getattr(text, k, None) is not None for k in _LOGIT_TRANSFORMS):
        yield None
        return
    head.forward = _identity
    try:
        yield head
    finally:
        del head.forward  # the class's forward again


def head_logprobs(
    head: torch.nn.Module,
    hidden_BTH: torch.Tensor,
    ids_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    temperature: float,
    entropy: bool,
    chunk_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logp_BT, entropy_BT)`` of ``ids_BT`` where ``mask_BT`` is set (0 elsewhere), from the hidden states that
    predict them: ``token_logprobs(head(hidden_BTH), ids_BT)``, projecting only the masked positions, in chunks.

    >>> head = torch.nn.Linear(2, 3, bias=False)
    >>> _ = head.weight.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    >>> hidden = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    >>> logp, _ = head_logprobs(head, hidden, torch.tensor([[2, 0]]), torch.tensor([[1, 1]]), temperature=1.0,
    ...                         entropy=False, chunk_bytes=4 * 3)  # one token per chunk
    >>> logp.detach().round(decimals=4)  # log(1/3); log(e^2 / (e^2 + 2))
    tensor([[-1.0986, -0.2395]])
    """
    mask = mask_BT.bool()
    h_MH, ids_M = hidden_BTH[mask], ids_BT[mask]
    vocab = _vocab_size(head, hidden_BTH)
    chunk = max(1, (chunk_bytes or LOGITS_CHUNK_BYTES) // (4 * vocab))
    if h_MH.shape[0] <= chunk:  # one chunk: nothing to free early, nothing to recompute
        logp_M, ent_M = _project(head, h_MH, ids_M, temperature, entropy)
    else:
        parts = [
            checkpoint(_project, head, h, ids, temperature, entropy, use_reentrant=False)
            for h, ids in zip(h_MH.split(chunk), ids_M.split(chunk), strict=True)
        ]
        logp_M = torch.cat([p[0] for p in parts])
        ent_M = torch.cat([p[1] for p in parts]) if entropy else None
    logp_BT = logp_M.new_zeros(mask.shape).masked_scatter(mask, logp_M)  # differentiable, also with no token
    ent_BT = ent_M.new_zeros(mask.shape).masked_scatter(mask, ent_M) if entropy else None
    return logp_BT, ent_BT


def _project(head, h_MH, ids_M, temperature: float, entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: logits, then the picked log-probability (and the entropy, without gradient)."""
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point() and not torch.is_autocast_enabled():
        h_MH = h_MH.to(weight.dtype)  # a model that upcast its hidden states for its own logits (lossless back)
    logits_MV = head(h_MH)
    return token_logprobs(logits_MV, ids_M, temperature), token_entropy(logits_MV, temperature) if entropy else None


def _vocab_size(head: torch.nn.Module, hidden: torch.Tensor) -> int:
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[0]
    with torch.no_grad():  # a head without a plain weight (quantised, wrapped): ask it
        return head(hidden.reshape(-1, hidden.shape[-1])[:1]).shape[-1]
