"""Per-token log-probabilities of completion tokens under a model (the training forward).

Three layouts of the same computation, fastest first (``rl.forward.PolicyForward`` picks):

* packed (``packed_logprobs``): every distinct prompt once, then every completion, real tokens only, as one row;
  all per-token work (projections, norms, MoE, LM head) runs on real tokens, and only attention unpacks them into
  per-sequence blocks (``packed_sdpa``);
* shared prompts (``shared_prompt_logprobs``): each distinct prompt once, completions padded, attending to the
  prompts' KV cache;
* padded: every row's prompt and completion, padded (the reference).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache

from core.hf import CACHE_KWARG, full_sdpa_attention
from rl.lm_head import head_logprobs, hidden_states_out, token_entropy, token_logprobs
from rl.moe.capture import TokenMap
from rollouts.records import SequenceTensors

PACKED = "r1kit_packed"  # the attention implementation name registered below


def padded_logprobs(
    model: torch.nn.Module, seq: SequenceTensors, *, temperature: float = 1.0, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``logp_BT`` of the completion tokens in ``seq`` (0 at padding) and, with ``entropy``, ``token_entropy`` of
    each completion position (0 at padding); every row's prompt and completion run padded: the reference layout
    (``rl.forward.PolicyForward`` chooses among the three).

    Only the last T+1 positions reach the LM head (``logits_to_keep``), and of those only the real completion
    tokens, in chunks (``rl.lm_head``): no [B, T, V] logits. Logits are divided by the sampling temperature so that
    importance ratios compare the distribution the tokens were actually drawn from (as TRL does).
    """
    T = seq.completion_ids_BT.shape[1]
    with hidden_states_out(model) as head:
        out = model(
            input_ids=seq.input_ids_BL,
            attention_mask=seq.attention_mask_BL,
            position_ids=seq.position_ids_BL,
            logits_to_keep=T + 1,
            use_cache=False,
        )
    return _score(head, out.logits[:, -(T + 1) : -1], seq, temperature, entropy)  # position j predicts token j+1


def _score(
    head: torch.nn.Module | None, states_BTX: torch.Tensor, seq: SequenceTensors, temperature: float, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp_BT, entropy_BT) from what predicts each completion token: hidden states (X = H) when ``head`` is the
    LM head ``hidden_states_out`` set aside, else the model's own logits (X = V)."""
    mask_BT = seq.completion_mask_BT
    if head is not None:
        return head_logprobs(
            head, states_BTX, seq.completion_ids_BT, mask_BT, temperature=temperature, entropy=entropy
        )
    logp_BT = token_logprobs(states_BTX, seq.completion_ids_BT, temperature) * mask_BT
    return logp_BT, token_entropy(states_BTX, temperature) * mask_BT if entropy else None


def shared_prompt_logprobs(
    model: torch.nn.Module, seq: SequenceTensors, *, temperature: float = 1.0, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``padded_logprobs`` with each distinct prompt run once: U prompt rows, then B completion rows that
    attend to their prompt's KV cache (selected per row; gradients from all G rows flow back into the one prompt
    forward). None when no prompt repeats (nothing to share).

    The padded reference runs B x (P + T) tokens; this runs U x P + B x T. With G = 8 and prompts a third of a
    sequence that is ~25% fewer tokens through every layer, forward and backward.
    """
    P, T = seq.prompt_len, seq.completion_ids_BT.shape[1]
    B = seq.input_ids_BL.shape[0]
    key_BK = torch.cat([seq.input_ids_BL[:, :P], seq.attention_mask_BL[:, :P]], dim=1)
    _, prompt_B = torch.unique(key_BK, dim=0, return_inverse=True)  # row -> its distinct prompt
    U = int(prompt_B.max()) + 1
    if U == B:
        return None
    rows_B = torch.arange(B, device=prompt_B.device)
    first_U = torch.full((U,), B, device=prompt_B.device).scatter_reduce(0, prompt_B, rows_B, reduce="amin")
    cache = DynamicCache(config=model.config)
    with hidden_states_out(model) as head:
        prompt_out = model(
            input_ids=seq.input_ids_BL[first_U, :P],
            attention_mask=seq.attention_mask_BL[first_U, :P],
            position_ids=seq.position_ids_BL[first_U, :P],
            **{CACHE_KWARG: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_select_indices(prompt_B)  # (U, ...) -> (B, ...): each row reads its prompt's keys and values
        out = model(
            input_ids=seq.input_ids_BL[:, P:],
            attention_mask=seq.attention_mask_BL,
            position_ids=seq.position_ids_BL[:, P:],
            **{CACHE_KWARG: cache},
            use_cache=True,
            logits_to_keep=T,
        )
    # Token 0 is predicted by the prompt's last position, token j by completion position j - 1.
    states_BTX = torch.cat([prompt_out.logits[prompt_B, -1:], out.logits[:, : T - 1]], dim=1)
    return _score(head, states_BTX, seq, temperature, entropy)


# ---------------------------------------------------------------------------------------------------- packed
@dataclass(frozen=True)
class Packing:
    """Where each real token of a batch goes in the packed row, and back.

    Packed order: the U distinct prompts' real tokens (prompt 0 first), then the B completions' real tokens
    (row 0 first); N tokens in all. ``prompt_idx_UP`` / ``comp_idx_BT`` index the
    packed row for each (sequence, position) of the right-padded per-sequence blocks attention works on; padding
    points at index N (a zero row appended there). ``prompt_B``: each completion's prompt.
    """

    input_ids_1N: torch.Tensor
    position_ids_1N: torch.Tensor
    prompt_B: torch.Tensor
    prompt_idx_UP: torch.Tensor
    prompt_valid_UP: torch.Tensor
    comp_idx_BT: torch.Tensor
    comp_valid_BT: torch.Tensor
    keep_K: torch.Tensor  # packed positions whose logits are needed: each prompt's last token, every completion token
    pred_BT: torch.Tensor  # for completion token (b, t): the index in keep_K of the position that predicts it
    tokens: TokenMap  # packed index of each (row, position) of the padded batch, and back (router outputs)


def pack(seq: SequenceTensors) -> Packing:
    """The packing of ``seq`` (prompts left-padded to P, completions right-padded to T)."""
    P = seq.prompt_len
    B, T = seq.completion_ids_BT.shape
    dev = seq.input_ids_BL.device
    prompt_mask_BP = seq.attention_mask_BL[:, :P].bool()
    comp_mask_BT = seq.attention_mask_BL[:, P:].bool()  # real tokens (the loss mask may drop some rows)
    key_BK = torch.cat([seq.input_ids_BL[:, :P], prompt_mask_BP.long()], dim=1)
    _, prompt_B = torch.unique(key_BK, dim=0, return_inverse=True)
    U = int(prompt_B.max()) + 1
    first_U = torch.full((U,), B, device=dev).scatter_reduce(0, prompt_B, torch.arange(B, device=dev), reduce="amin")
    pmask_UP = prompt_mask_BP[first_U]
    plen_U, clen_B = pmask_UP.sum(1), comp_mask_BT.sum(1)
    n_prompt = int(plen_U.sum())
    N = n_prompt + int(clen_B.sum())
    ids_1N = torch.cat([seq.input_ids_BL[first_U, :P][pmask_UP], seq.input_ids_BL[:, P:][comp_mask_BT]])[None]
    t_T = torch.arange(T, device=dev)
    pos_1N = torch.cat([seq.position_ids_BL[first_U, :P][pmask_UP], seq.position_ids_BL[:, P:][comp_mask_BT]])
    pstart_U = plen_U.cumsum(0) - plen_U
    cstart_B = n_prompt + clen_B.cumsum(0) - clen_B
    Pm, Tm = int(plen_U.max()), int(clen_B.max())
    p_valid_UP = torch.arange(Pm, device=dev) < plen_U[:, None]
    c_valid_BT = torch.arange(Tm, device=dev) < clen_B[:, None]
    p_idx_UP = torch.where(p_valid_UP, pstart_U[:, None] + torch.arange(Pm, device=dev), N)
    c_idx_BT = torch.where(c_valid_BT, cstart_B[:, None] + torch.arange(Tm, device=dev), N)
    # Logits: each prompt's last position predicts its completions' token 0; completion position t, token t + 1.
    keep_K = torch.cat([pstart_U + plen_U - 1, torch.arange(n_prompt, N, device=dev)])
    pred_BT = torch.where(t_T == 0, prompt_B[:, None], U + (cstart_B[:, None] - n_prompt) + t_T - 1)
    pred_BT = pred_BT.clamp(max=keep_K.shape[0] - 1)  # padding: any valid index (masked out afterwards)
    tokens = _token_map(prompt_mask_BP, comp_mask_BT, pstart_U[prompt_B], cstart_B, N)
    return Packing(ids_1N, pos_1N[None], prompt_B, p_idx_UP, p_valid_UP, c_idx_BT, c_valid_BT, keep_K, pred_BT, tokens)


def _token_map(prompt_mask_BP, comp_mask_BT, pstart_B, cstart_B, N: int) -> TokenMap:
    """Where each (row, position) of the padded batch sits in the packed row (N at padding); the G rows of a
    group share their prompt's packed tokens, and each packed token's source is the first row holding it."""
    index_BP = torch.where(prompt_mask_BP, pstart_B[:, None] + prompt_mask_BP.cumsum(1) - 1, N)
    index_BT = torch.where(comp_mask_BT, cstart_B[:, None] + comp_mask_BT.cumsum(1) - 1, N)
    index_BL = torch.cat([index_BP, index_BT], dim=1)
    flat = torch.arange(index_BL.numel(), device=index_BL.device)
    source = torch.full((N + 1,), index_BL.numel(), device=index_BL.device)
    source = source.scatter_reduce(0, index_BL.reshape(-1), flat, reduce="amin")
    return TokenMap(index_BL, source[:N])


def packed_logprobs(
    model: torch.nn.Module,
    seq: SequenceTensors,
    *,
    temperature: float = 1.0,
    packing: Packing | None = None,
    entropy: bool = False,
):
    """``padded_logprobs`` over the packed row: no padding anywhere but inside attention (``packed_sdpa``).

    The padded reference runs B x (P + T) tokens, the shared-prompt layout U x P + B x T; this runs the real
    ones, U x (prompt length) + sum of completion lengths (~15% fewer than shared prompts on the tiny benchmark,
    far fewer with long, uneven reasoning traces).
    """
    packing = pack(seq) if packing is None else packing
    with attention_implementation(model, PACKED), hidden_states_out(model) as head:
        out = model(
            input_ids=packing.input_ids_1N,
            position_ids=packing.position_ids_1N,
            use_cache=False,
            logits_to_keep=packing.keep_K,
            r1kit_packing=packing,
        )
    return _score(head, out.logits[0, packing.pred_BT], seq, temperature, entropy)


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention over a packed row (``Packing``): gather the prompts into right-padded blocks (causal), the
    completions into blocks that see their prompt's keys then their own (causal), run sdpa on each, scatter the
    outputs back to packed order. Registered as the ``r1kit_packed`` attention implementation."""
    packing: Packing | None = kwargs.get("r1kit_packing")
    if packing is None:
        raise RuntimeError(f"{type(module).__name__} did not pass r1kit_packing to its attention function")
    q_N, k_N, v_N = (_with_zero_row(x) for x in (query, key, value))  # (N + 1, heads, dim)
    p, c = packing.prompt_idx_UP, packing.comp_idx_BT
    Pm, Tm = p.shape[1], c.shape[1]
    q_p, k_p, v_p = (x[p].transpose(1, 2) for x in (q_N, k_N, v_N))  # (U, heads, Pm, dim)
    causal_P = torch.ones(Pm, Pm, dtype=torch.bool, device=p.device).tril()
    mask_p = causal_P & packing.prompt_valid_UP[:, None, None, :]
    out_p = _sdpa(q_p, k_p, v_p, mask_p, dropout, scaling)  # (U, Pm, heads, dim)
    k_c = torch.cat([k_p[packing.prompt_B], k_N[c].transpose(1, 2)], dim=2)  # (B, heads, Pm + Tm, dim)
    v_c = torch.cat([v_p[packing.prompt_B], v_N[c].transpose(1, 2)], dim=2)
    causal_T = torch.ones(Tm, Tm, dtype=torch.bool, device=c.device).tril()
    mask_c = torch.cat(
        [
            packing.prompt_valid_UP[packing.prompt_B][:, None, None, :].expand(-1, 1, Tm, Pm),
            causal_T & packing.comp_valid_BT[:, None, None, :],
        ],
        dim=-1,
    )
    out_c = _sdpa(q_N[c].transpose(1, 2), k_c, v_c, mask_c, dropout, scaling)
    return torch.cat([out_p[packing.prompt_valid_UP], out_c[packing.comp_valid_BT]])[None], None


def _sdpa(q_bhLd, k_bhLd, v_bhLd, mask_b1LL, dropout: float, scaling: float | None) -> torch.Tensor:
    """transformers' sdpa attention for a boolean mask (output (b, L, heads, dim)), with grouped-query attention
    done by the kernel (``enable_gqa``) instead of repeating keys and values: ~20% less forward + backward."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q_bhLd,
        k_bhLd,
        v_bhLd,
        attn_mask=mask_b1LL,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=q_bhLd.shape[1] != k_bhLd.shape[1],
    )
    return out.transpose(1, 2)


def _with_zero_row(x_1hNd: torch.Tensor) -> torch.Tensor:
    """(1, heads, N, dim) -> (N + 1, heads, dim), the last row zeros (where padding indices point)."""
    x = x_1hNd[0].transpose(0, 1)
    return torch.cat([x, x.new_zeros(1, *x.shape[1:])])


AttentionInterface.register(PACKED, packed_sdpa)


def can_pack(model: torch.nn.Module) -> bool:
    """Whether the packed layout computes what the padded one does: sdpa attention over all earlier positions in
    every layer (the blocks ``packed_sdpa`` builds have no sliding windows or chunks)."""
    configs = _configs(model)
    return bool(configs) and all(full_sdpa_attention(c) for c in configs)


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Every config in ``model`` (a peft wrapper's base model included) set to attention ``name`` inside."""
    configs = _configs(model)
    saved = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = name
        yield
    finally:
        for c, impl in zip(configs, saved, strict=True):
            c._attn_implementation = impl


def _configs(model: torch.nn.Module) -> list:
    seen: dict[int, object] = {}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            seen[id(c)] = c
    return list(seen.values())
