"""Log-probabilities through the LM head in chunks (``rl.lm_head``): the same numbers and gradients as projecting the
full logits, and never more than a chunk of logits at a time, in forward or in backward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import rl.lm_head
from rl.forward import LAYOUTS, PolicyForward
from rl.lm_head import head_logprobs, hidden_states_out, token_entropy, token_logprobs
from rollouts.records import Completion, Prompt, to_tensors


def _case(V=50, H=8, B=3, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
        head.bias.copy_(torch.randn(V, generator=g))
    hidden = torch.randn(B, T, H, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])  # full, short, empty row
    return head, hidden, ids, mask


def _grads(head, hidden, logp_BT, weights_BT):
    head.zero_grad()
    hidden.grad = None
    (logp_BT * weights_BT).sum().backward()
    return hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()


@pytest.mark.parametrize("chunk_tokens", [1, 2, 3, 100])
def test_chunks_give_the_full_logits_numbers_and_gradients(chunk_tokens):
    head, hidden, ids, mask = _case()
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(5))
    logits = head(hidden)
    ref_logp = token_logprobs(logits, ids, 0.7) * mask
    ref_ent = token_entropy(logits, 0.7) * mask
    ref_grads = _grads(head, hidden, ref_logp, weights)
    logp, ent = head_logprobs(
        head, hidden, ids, mask, temperature=0.7, entropy=True, chunk_bytes=4 * 50 * chunk_tokens
    )
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-6)
    assert not ent.requires_grad, "entropy is a logged statistic"
    for got, want in zip(_grads(head, hidden, logp, weights), ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (logp[mask == 0] == 0).all() and (hidden.grad[2] == 0).all(), "padding takes no part"


def test_no_more_than_a_chunk_of_logits_exists_in_forward_or_backward():
    head, hidden, ids, mask = _case()
    rows = []
    head.register_forward_hook(lambda mod, args, out: rows.append(out.shape[0]))
    logp, _ = head_logprobs(head, hidden, ids, mask, temperature=1.0, entropy=False, chunk_bytes=4 * 50 * 2)
    assert rows == [2, 2, 2, 1], "7 real tokens in chunks of 2: the head never sees the padding or [B, T, V]"
    logp.sum().backward()
    assert sorted(rows[4:]) == [1, 2, 2, 2], "backward recomputes each chunk's logits on its own"


def test_an_empty_mask_gives_zeros_and_a_gradient_path():
    head, hidden, ids, _ = _case()
    logp, ent = head_logprobs(head, hidden, ids, torch.zeros(3, 5), temperature=1.0, entropy=True)
    assert logp.eq(0).all() and ent.eq(0).all()
    logp.sum().backward()  # an all-masked micro-batch still backpropagates (a zero gradient)
    assert hidden.grad.eq(0).all()


def _tiny(tiny_random_model_dir, **config):
    path = tiny_random_model_dir("qwen3_moe")
    return AutoModelForCausalLM.from_pretrained(path, **config), AutoTokenizer.from_pretrained(path)


def _seq(tok):
    p = Prompt("p", "")
    rows = [
        Completion(0, p, [5, 6, 7], [8, 9, 10, 11], "", "eos"),
        Completion(0, p, [5, 6, 7], [12], "", "eos"),
        Completion(1, p, [4], [3, 2, 13], "", "length"),
    ]
    return to_tensors(rows, tok.pad_token_id)


@pytest.mark.parametrize("layout", sorted(LAYOUTS.names()))
def test_every_layout_equals_the_models_own_logits(tiny_random_model_dir, monkeypatch, layout):
    """The model's forward with its head shadowed, then chunked projection, against the plain forward's logits."""
    model, tok = _tiny(tiny_random_model_dir)
    seq = _seq(tok)
    T = seq.completion_ids_BT.shape[1]
    logits = model(
        input_ids=seq.input_ids_BL, attention_mask=seq.attention_mask_BL, position_ids=seq.position_ids_BL
    ).logits[:, -(T + 1) : -1]
    ref = token_logprobs(logits, seq.completion_ids_BT, 0.9) * seq.completion_mask_BT
    monkeypatch.setattr(rl.lm_head, "LOGITS_CHUNK_BYTES", 4 * model.config.vocab_size * 2)  # 2 tokens a chunk
    calls = []
    model.lm_head.register_forward_hook(lambda mod, args, out: calls.append(out.shape[-1]))
    with PolicyForward([], temperature=0.9)(model, seq, layout=layout) as out:
        torch.testing.assert_close(out.logp_BT, ref, atol=1e-5, rtol=0)
    # the model calls its (shadowed) head once per forward on hidden states; the 8 real tokens then take 4 chunks
    H, V = model.config.hidden_size, model.config.vocab_size
    assert (
        calls.count(V) == 4 and calls.count(H) == (2 if layout == "shared" else 1) and len(calls) == 4 + calls.count(H)
    )
    assert type(model.lm_head).forward is torch.nn.Linear.forward and "forward" not in vars(model.lm_head)


def test_models_that_transform_their_logits_keep_them(tiny_random_model_dir):
    model, tok = _tiny(tiny_random_model_dir)
    with hidden_states_out(model) as head:
        assert head is model.lm_head
    model.config.final_logit_softcapping = 30.0  # as Gemma: the forward soft-caps after the head
    with hidden_states_out(model) as head:
        assert head is None
    with PolicyForward([], temperature=1.0)(model, _seq(tok), layout="padded") as out:
        assert out.logp_BT.shape == (3, 4)
