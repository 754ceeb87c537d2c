"""A lean decoding loop for rollouts: each distinct prompt is prefilled once and its KV cache shared by the G
samples of its group, finished rows leave the batch, and nothing else runs between two forwards.

On small models the per-token cost of ``model.generate`` is mostly Python (input preparation, logits-processor
and stopping-criteria objects, cache bookkeeping): about 40% of a decode step of the 1.3M-parameter tiny MoE.
This loop calls the model's forward directly. It samples exactly as ``generate`` does for the options r1kit
exposes (float32 logits -> temperature -> top-k -> top-p -> ``softmax`` -> ``torch.multinomial``; greedy is
``argmax``) and draws from the random generator in the same amounts, so under the same seed it produces the
same tokens as ``model.generate`` on the same rows (``tests/test_perf_equivalence.py``). Generation-config
defaults shipped with a checkpoint (repetition penalty, min-p, ...) are deliberately not applied: RL samples
from the policy's own distribution, the one the training forward scores.

Synced decoding (``sync``) is for sharded weights (FSDP2): there every forward is a collective (each layer
all-gathers its weights), so every process must run the same number of forwards or the run deadlocks. A process
whose rows are all done keeps one finished row as a ghost and feeds it through the model, its outputs discarded,
until no process is decoding any more; its own rows' tokens are those of an unsynced run.

Shapes: U distinct prompts, B = sum of their repeats (rows), n live rows, V vocabulary, P padded prompt length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from core.hf import CACHE_KWARG, full_sdpa_attention
from rollouts.fused import fused_decoder
from rollouts.stops import StopStrings


@dataclass
class SampledTokens:
    """Per row: the new tokens (through the first EOS or the token completing a stop string, inclusive) and their
    log-probabilities under the temperature-scaled distribution (the one the trainer's forward computes)."""

    tokens: list[list[int]]
    logprobs: list[list[float]]


def filter_logits(scores_BV: torch.Tensor, *, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """``generate``'s warpers in its order (temperature, top-k, top-p), each skipped when it is a no-op there.

    >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0]]), temperature=1.0, top_k=2, top_p=1.0)
    tensor([[-inf, 3., 2.]])
    """
    if temperature != 1.0:
        scores_BV = scores_BV / temperature
    if top_k:
        kth = torch.topk(scores_BV, min(top_k, scores_BV.shape[-1]))[0][..., -1, None]
        scores_BV = scores_BV.masked_fill(scores_BV < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores_BV, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False  # keep at least one token
        scores_BV = scores_BV.masked_fill(remove.scatter(1, sorted_idx, remove), -float("inf"))
    return scores_BV


def sample(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    repeats: Sequence[int],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    fused: bool = True,
    stop: StopStrings | None = None,
    sync: Callable[[bool], bool] | None = None,
) -> SampledTokens:
    """``repeats[u]`` completions of ``prompt_ids[u]``, rows in prompt order (prompt 0's repeats first).

    ``fused``: decode with ``rollouts.fused``'s step where it covers the model (same results, less overhead per
    token); otherwise, and with False, each step calls the model's forward. ``stop``: a row whose latest token
    completes a stop string ends there (token kept) and leaves the batch, as at EOS.

    ``sync(still_decoding_here) -> any_process_still_decoding``: a collective the caller provides (an all-reduce
    over processes), asked once after every step; decoding stops when it returns False, and until then a process
    whose rows are done runs a ghost row's forward per step (outputs discarded, no random draws: the tokens, and
    the random generator's state after the call, are those of an unsynced run). Every process must make the same
    calls with the same number of rows (the prefill is one collective forward too). With ``sync`` the model's own
    forward always runs (the fused step reads weights directly, which sharded weights do not allow), under
    ``no_grad``: FSDP2's all-gathered parameters must not become inference tensors."""
    fused = fused and sync is None
    # inference_mode, not just no_grad: no view or version tracking either, ~8% faster per decode step here.
    with torch.inference_mode() if sync is None else torch.no_grad():
        out = _sample(
            model,
            prompt_ids,
            repeats,
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
            pad_id=pad_id,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            greedy=greedy,
            fused=fused,
            stop=stop,
            sync=sync,
        )
    _renew_inference_buffers(model)
    return out


def _renew_inference_buffers(model: torch.nn.Module) -> None:
    """Buffers a forward re-assigned under inference_mode (dynamic RoPE frequencies, for one) are inference
    tensors, which a later training forward cannot save for backward: replace them with normal copies."""
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_inference():
                module._buffers[name] = buf.clone()


def _sample(
    model,
    prompt_ids,
    repeats,
    *,
    max_new_tokens,
    eos_ids,
    pad_id,
    temperature,
    top_p,
    top_k,
    greedy,
    fused,
    stop,
    sync,
):
    device = next(model.parameters()).device
    P = max(len(ids) for ids in prompt_ids)
    ids_UP = torch.tensor([[pad_id] * (P - len(ids)) + list(ids) for ids in prompt_ids], device=device)
    attn_UP = torch.tensor([[False] * (P - len(ids)) + [True] * len(ids) for ids in prompt_ids], device=device)
    # As generate: positions count real tokens; left padding gets position 1 (masked out anyway).
    pos_UP = (attn_UP.cumsum(-1) - 1).masked_fill(~attn_UP, 1)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=ids_UP,
        attention_mask=attn_UP,
        position_ids=pos_UP,
        **{CACHE_KWARG: cache},
        use_cache=True,
        logits_to_keep=1,
    )
    row_U = torch.arange(len(prompt_ids), device=device).repeat_interleave(torch.tensor(repeats, device=device))
    cache.batch_select_indices(row_U)  # share each prompt's KV cache with its group: prefilled once, not G times
    logits_nV = out.logits[row_U, -1].float()
    attn_nL, next_pos_n = attn_UP[row_U], pos_UP[row_U, -1] + 1
    B = row_U.shape[0]
    # With left padding, hand the model its decode mask ready-made: (n, 1, 1, L), the padding row itself, which is
    # what create_causal_mask would build for one query (~5% of a decode step saved). Without padding, no mask,
    # as generate does.
    padded = not bool(attn_UP.all())
    own_mask = _can_pass_decode_mask(model) and padded
    decoder = fused_decoder(model, cache, max_new_tokens) if fused else None  # takes over the cache's contents
    live_n = torch.arange(B, device=device)  # which original row each live row is
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    tok_BT = torch.full((B, max_new_tokens), -1, dtype=torch.long, device=device)  # -1: after the row finished
    logp_BT = torch.zeros((B, max_new_tokens), device=device)
    for t in range(max_new_tokens):
        tok_n = _pick(logits_nV, live_n, B, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
        tok_BT[live_n, t] = tok_n
        logp_BT[live_n, t] = _logprob(logits_nV, tok_n, temperature)
        keep_n = ~torch.isin(tok_n, eos)
        if stop is not None:
            keep_n &= ~_stop_hits_n(stop, tok_BT, live_n, t)
        n_keep = int(keep_n.sum())
        here = n_keep > 0 and t < max_new_tokens - 1
        anywhere = sync(here) if sync is not None else here
        if not (here and anywhere):
            if anywhere:  # done here, not elsewhere: keep the other processes' forwards company
                _ghost_steps(model, cache, tok_n[:1], attn_nL[:1], next_pos_n[:1], own_mask, sync)
            break
        if n_keep < keep_n.shape[0]:  # finished rows leave the batch: later steps compute only live rows
            idx = keep_n.nonzero().squeeze(1)
            if decoder is not None:
                decoder.keep(idx)
            else:
                cache.batch_select_indices(idx)
            tok_n, attn_nL, next_pos_n, live_n = tok_n[idx], attn_nL[idx], next_pos_n[idx], live_n[idx]
        attn_nL = torch.cat([attn_nL, attn_nL.new_ones(n_keep, 1)], dim=1)
        if decoder is not None:
            logits_nV = decoder.step(tok_n, next_pos_n, attn_nL[:, None, None, :] if padded else None).float()
        else:
            logits_nV = _forward_step(model, cache, tok_n, attn_nL, next_pos_n, own_mask)
        next_pos_n = next_pos_n + 1
    lengths = (tok_BT >= 0).sum(-1).tolist()
    tokens = [row[:n] for row, n in zip(tok_BT.tolist(), lengths, strict=True)]
    return SampledTokens(tokens, [row[:n] for row, n in zip(logp_BT.tolist(), lengths, strict=True)])


def _forward_step(model, cache, tok_n, attn_nL, pos_n, own_mask: bool) -> torch.Tensor:
    """One decode step through the model's forward: the logits of each row's next token, (n, V) float32."""
    out = model(
        input_ids=tok_n[:, None],
        attention_mask=attn_nL[:, None, None, :] if own_mask else attn_nL,
        position_ids=pos_n[:, None],
        **{CACHE_KWARG: cache},
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float()


def _ghost_steps(model, cache, tok_1, attn_1L, pos_1, own_mask: bool, sync: Callable[[bool], bool]) -> None:
    """Forwards of one finished row, outputs discarded, until ``sync`` says no process decodes any more.

    The first runs at once (``sync`` has just said another process is still decoding). The ghost is a finished
    row continuing rather than a dummy input, so each forward takes the path a decode step takes (same cache,
    mask and position kinds); it feeds its last token again and samples nothing: no random draws, so the
    generator's state after the call is that of an unsynced run, and later calls in this process sample as they
    would have without ``sync``."""
    cache.batch_select_indices(torch.zeros(1, dtype=torch.long, device=tok_1.device))  # (1, h, L, d) per layer
    while True:
        attn_1L = torch.cat([attn_1L, attn_1L.new_ones(1, 1)], dim=1)
        _forward_step(model, cache, tok_1, attn_1L, pos_1, own_mask)
        pos_1 = pos_1 + 1
        if not sync(False):
            return


def _stop_hits_n(stop: StopStrings, tok_BT: torch.Tensor, live_n: torch.Tensor, t: int) -> torch.Tensor:
    """Which live rows' token ``t`` completes a stop string: only the last ``stop.window`` tokens of each row are
    decoded (a stop string cannot reach further back), so the check costs the same at token 10 as at 1000."""
    tails = tok_BT[live_n, max(0, t + 1 - stop.window) : t + 1].tolist()
    return torch.tensor(stop.hits(tails), dtype=torch.bool, device=live_n.device)


def _can_pass_decode_mask(model: torch.nn.Module) -> bool:
    """Whether a 4-D boolean padding mask is exactly the mask the model would build for a one-token query: sdpa
    attention (eager wants an additive float mask, flash attention none) and full attention in every layer (no
    sliding windows or chunks, whose masks also cut old positions)."""
    return full_sdpa_attention(
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )


def _pick(logits_nV, live_n, B: int, *, greedy: bool, temperature: float, top_k: int, top_p: float):
    if greedy:
        return logits_nV.argmax(dim=-1)
    probs_nV = filter_logits(logits_nV, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    if probs_nV.shape[0] == B:
        return torch.multinomial(probs_nV, num_samples=1).squeeze(1)
    # generate keeps finished rows in its batch and samples them too; drawing for all B rows (finished ones get
    # a dummy one-hot distribution) keeps the random stream, and so every later token, identical to generate's.
    probs_BV = torch.zeros(B, probs_nV.shape[1], dtype=probs_nV.dtype, device=probs_nV.device)
    probs_BV[:, 0] = 1.0
    probs_BV[live_n] = probs_nV
    return torch.multinomial(probs_BV, num_samples=1).squeeze(1)[live_n]


def _logprob(logits_nV: torch.Tensor, tok_n: torch.Tensor, temperature: float) -> torch.Tensor:
    scaled = logits_nV / temperature if temperature != 1.0 else logits_nV
    return torch.log_softmax(scaled, dim=-1).gather(-1, tok_n[:, None]).squeeze(1)  # one kernel, not logsumexp's five
