"""The transformers backend: grouped sampling, left padding, finish reasons, and MoE router-logits configs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollouts.backends import TransformersBackend, router_logits_off
from rollouts.records import Prompt, to_tensors


def _load(path, **config):
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(path, **config), tok


def _prompts():
    return [Prompt("a", "Q: 1+2\nA:"), Prompt("b", "Q: 9+9+9+9+9\nA:")]  # different lengths: left padding


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_groups_lengths_and_finish_reasons(tiny_random_model_dir, family):
    model, tok = _load(tiny_random_model_dir(family))
    backend = TransformersBackend(model, tok, max_new_tokens=6)
    torch.manual_seed(0)
    batch = backend.generate(_prompts(), [10, 11], num_generations=3)
    assert batch.group_ids == [10, 10, 10, 11, 11, 11]
    for c in batch.completions:
        assert 1 <= c.num_tokens <= 6
        ends_with_eos = c.token_ids[-1] == tok.eos_token_id
        assert c.finish_reason == ("eos" if ends_with_eos else "length")
        assert tok.eos_token_id not in c.token_ids[:-1]
    seq = to_tensors(batch.completions, tok.pad_token_id)
    assert seq.completion_mask_BT.sum().item() == sum(c.num_tokens for c in batch.completions)


def test_greedy_is_deterministic(tiny_random_model_dir):
    model, tok = _load(tiny_random_model_dir("qwen3_moe"))
    backend = TransformersBackend(model, tok, max_new_tokens=5)
    a = backend.generate(_prompts(), [0, 1], num_generations=2, greedy=True)
    b = backend.generate(_prompts(), [0, 1], num_generations=2, greedy=True)
    assert a.texts == b.texts and a.texts[0] == a.texts[1]


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "mixtral"])
def test_generation_works_when_the_checkpoint_has_router_logits_on(tiny_random_model_dir, family):
    # Checkpoints often ship with output_router_logits=True (training wants the aux loss); generate must still work
    # on left-padded batches, and the flag must be restored afterwards.
    from transformers import AutoConfig

    path = tiny_random_model_dir(family)
    if not hasattr(AutoConfig.from_pretrained(path), "output_router_logits"):
        pytest.skip(f"this transformers version's {family} config has no output_router_logits")
    model, tok = _load(path, output_router_logits=True)
    assert model.config.output_router_logits is True
    backend = TransformersBackend(model, tok, max_new_tokens=4)
    batch = backend.generate(_prompts(), [0, 1], num_generations=2)
    assert len(batch) == 4
    assert model.config.output_router_logits is True


def test_router_logits_off_restores_on_error(tiny_random_model_dir):
    model, _ = _load(tiny_random_model_dir("qwen3_moe"), output_router_logits=True)
    with pytest.raises(RuntimeError), router_logits_off(model):
        assert model.config.output_router_logits is False
        raise RuntimeError("boom")
    assert model.config.output_router_logits is True
