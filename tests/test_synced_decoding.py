"""Synced decoding (``sample(..., sync=...)``): with sharded weights every forward is a collective, so a process
whose rows are done must keep running forwards, on a ghost row, until no process decodes any more.

No process group here: ``OtherProcess`` stands in for the all-reduce, a peer that decodes a given number of steps
after the prefill. A forward pre-hook counts the model's forwards and records the autograd modes they run under.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import rollouts.sampler
from rollouts.backends import TransformersBackend
from rollouts.records import Prompt
from rollouts.sampler import sample

PROMPTS = ["Q: 1+2\nA:", "Q: 9+9+9+9+9\nA:", "Q: 4+4+1\nA:"]  # different lengths: left padding
REPEATS = [2, 2, 1]
MAX_NEW = 12
SEED = 0


class OtherProcess:
    """``sync`` for two processes, the other one decoding ``steps`` forwards after its prefill: after step t it is
    still decoding while t < steps, so "any process still decoding" is ``here or t < steps``."""

    def __init__(self, steps: int) -> None:
        self.steps, self.asked = steps, []  # asked: this process's ``here`` at each step

    def __call__(self, here: bool) -> bool:
        t = len(self.asked)
        self.asked.append(here)
        return here or t < self.steps


@pytest.fixture(scope="module")
def tiny(tiny_random_model_dir):
    path = tiny_random_model_dir("qwen3_moe")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    # Many stop tokens: this process's rows finish early and at different steps, well before MAX_NEW.
    eos_ids = sorted({tok.eos_token_id, *tok.encode("0123456789abcdefghijklmnopqrstuvwxyz +=")})
    return model, tok, eos_ids


@pytest.fixture
def forwards(tiny):
    """One record per model forward: (rows, grad enabled, inference mode enabled)."""
    calls: list[tuple[int, bool, bool]] = []

    def record(module, args, kwargs):
        calls.append((kwargs["input_ids"].shape[0], torch.is_grad_enabled(), torch.is_inference_mode_enabled()))

    handle = tiny[0].register_forward_pre_hook(record, with_kwargs=True)
    yield calls
    handle.remove()


def _sample(tiny, sync=None, **kw):
    model, tok, eos_ids = tiny
    torch.manual_seed(SEED)
    out = sample(
        model,
        [tok.encode(p) for p in PROMPTS],
        REPEATS,
        max_new_tokens=MAX_NEW,
        eos_ids=eos_ids,
        pad_id=tok.pad_token_id,
        sync=sync,
        **kw,
    )
    return out, torch.get_rng_state()


@pytest.mark.parametrize(
    "extra", [-3, -1, 0, 1, 4, None], ids=lambda e: f"other{e:+d}" if e is not None else "other-max"
)
def test_forwards_follow_the_longest_process_and_tokens_are_unchanged(tiny, forwards, extra):
    ref, ref_rng = _sample(tiny)
    d = len(forwards) - 1  # this process's decode steps when it runs alone
    lengths = {len(t) for t in ref.tokens}
    assert 0 < d < MAX_NEW - 1 and len(lengths) > 1, "rows must finish early, at different steps, for the test to bite"
    other = max(0, MAX_NEW - 1 if extra is None else d + extra)  # the other process's decode steps
    forwards.clear()
    sync = OtherProcess(other)
    out, rng = _sample(tiny, sync)
    steps = max(d, other)
    # One prefill, then a forward per step of whichever process decodes longer; none extra when the other stops
    # first or together with this one (extra <= 0).
    assert len(forwards) == 1 + steps
    assert sync.asked == [True] * d + [False] * (steps - d + 1)  # asked once per step, the last one says stop
    assert [rows for rows, _, _ in forwards[d + 1 :]] == [1] * (steps - d)  # the ghost: one row
    assert out.tokens == ref.tokens
    assert out.logprobs == ref.logprobs
    # The ghost samples nothing: the generator's state after the call is that of the unsynced run.
    assert torch.equal(rng, ref_rng)


def test_synced_forwards_run_under_no_grad_without_the_fused_step(tiny, forwards, monkeypatch):
    built = []
    monkeypatch.setattr(rollouts.sampler, "fused_decoder", lambda *a: built.append(a) or None)
    _sample(tiny)
    assert built, "unsynced, the sampler asks for the fused decoder (the check below can fail)"
    assert {(grad, inference) for _, grad, inference in forwards} == {(False, True)}
    built.clear()
    forwards.clear()
    _sample(tiny, OtherProcess(MAX_NEW - 1), fused=True)
    assert not built
    # FSDP2 all-gathers parameters inside the forward: they must not become inference tensors.
    assert {(grad, inference) for _, grad, inference in forwards} == {(False, False)}
    assert not any(b.is_inference() for b in tiny[0].buffers())


def test_a_process_done_at_the_first_token_still_runs_the_others_forwards(tiny, forwards):
    model, tok, _ = tiny

    def eos_only(module, args, kwargs, output):  # every row's first token is EOS, with probability 1
        logits = torch.full_like(output.logits, -1e9)
        logits[..., tok.eos_token_id] = 0.0
        output.logits = logits
        return output

    handle = model.register_forward_hook(eos_only, with_kwargs=True)
    try:
        ref, _ = _sample(tiny)
        assert len(forwards) == 1  # alone: the prefill only
        forwards.clear()
        sync = OtherProcess(5)
        out, _ = _sample(tiny, sync)
    finally:
        handle.remove()
    assert ref.tokens == [[tok.eos_token_id]] * sum(REPEATS)
    assert (out.tokens, out.logprobs) == (ref.tokens, ref.logprobs)
    assert [rows for rows, _, _ in forwards] == [len(PROMPTS)] + [1] * 5  # prefill of the prompts, then the ghost
    assert sync.asked == [False] * 6


def _backend(tiny, sampler: str, sync=None) -> TransformersBackend:
    model, tok, _ = tiny
    # fused_decode off: the unsynced reference then runs the forward path too, so only sync differs between them.
    return TransformersBackend(model, tok, max_new_tokens=6, top_k=20, sampler=sampler, fused_decode=False, sync=sync)


def _generate(backend: TransformersBackend):
    torch.manual_seed(SEED)
    return backend.generate([Prompt(str(i), p) for i, p in enumerate(PROMPTS)], [0, 1, 2], num_generations=2)


def test_backend_passes_sync_to_the_r1kit_sampler(tiny):
    sync = OtherProcess(5)
    synced = _generate(_backend(tiny, "r1kit", sync))
    assert sync.asked, "the backend must hand sync to the sampler"
    plain = _generate(_backend(tiny, "r1kit"))
    assert [c.token_ids for c in synced.completions] == [c.token_ids for c in plain.completions]
    assert [c.logprobs for c in synced.completions] == [c.logprobs for c in plain.completions]


@pytest.mark.parametrize("synced", [True, False])
def test_generate_sampler_asks_for_synced_gpus_when_synced(tiny, monkeypatch, synced):
    # transformers' synced_gpus all-reduces over the default process group, which these tests do not have: record
    # the flag, then generate unsynced.
    model = tiny[0]
    seen = []
    real = model.generate

    def generate(**kwargs):
        seen.append(kwargs.pop("synced_gpus"))
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    batch = _generate(_backend(tiny, "generate", OtherProcess(0) if synced else None))
    assert seen == [synced]
    assert len(batch) == 2 * len(PROMPTS)
