"""The fused decode step (``rollouts.fused``) against the model's own forward (STYLE.md habit 7).

Teacher-forced: the same tokens go through the fused step and through ``model(...)`` with a ``DynamicCache``,
step after step, with left padding and with rows leaving the batch; the logits must agree within float
tolerance (on this machine they are bitwise equal: the same operators on the same values). The end-to-end check,
the same sampled tokens as ``model.generate`` under the same seed, is in ``test_perf_equivalence.py`` and runs
through the fused step for both families (asserted here, so that test cannot pass on the fallback path).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from rl.config import ModelConfig, MoEConfig, RolloutConfig
from rl.modeling import apply_lora
from rl.moe.control import attach_router_control
from rollouts.backends import torch_threads
from rollouts.fused import KVBuffers, fused_decoder, rope, signed_sin, unsupported

PROMPTS = ["Q: 1+2\nA:", "Q: 9+9+9+9+9\nA:", "Q: 4+4+1\nA:"]  # different lengths: left padding

VARIANTS = {
    "qwen3_moe": {},
    "qwen3_moe-bias-dense-layer-raw-topk": {"attention_bias": True, "mlp_only_layers": [1], "norm_topk_prob": False},
    "deepseek_v3": {},
    "deepseek_v3-q-lora-interleaved-rope": {"q_lora_rank": 24, "rope_interleave": True},
    "deepseek_v3-plain-rope-two-dense-layers": {"rope_interleave": False, "first_k_dense_replace": 2},
}


def _load(path, **kw):
    return AutoModelForCausalLM.from_pretrained(path, **kw).eval(), AutoTokenizer.from_pretrained(path)


def _prefill(model, tok, prompts, repeats):
    """Left-padded prefill of the distinct prompts, cache rows then repeated (as the sampler does)."""
    ids = [tok.encode(p) for p in prompts]
    P = max(map(len, ids))
    ids_UP = torch.tensor([[tok.pad_token_id] * (P - len(r)) + r for r in ids])
    attn_UP = torch.tensor([[False] * (P - len(r)) + [True] * len(r) for r in ids])
    pos_UP = (attn_UP.cumsum(-1) - 1).masked_fill(~attn_UP, 1)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids_UP, attention_mask=attn_UP, position_ids=pos_UP, past_key_values=cache, use_cache=True)
    rows = torch.arange(len(prompts)).repeat_interleave(torch.tensor(repeats))
    cache.batch_select_indices(rows)
    return cache, attn_UP[rows], pos_UP[rows, -1] + 1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_step_gives_the_models_logits(tiny_random_model_dir, variant):
    family = variant.split("-")[0]
    model, tok = _load(tiny_random_model_dir(family, **VARIANTS[variant]))
    assert unsupported(model) is None
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        cache, attn_nL, pos_n = _prefill(model, tok, PROMPTS, [3, 2, 2])
        decoder = fused_decoder(model, copy.deepcopy(cache), capacity=8)
        for t in range(8):
            if t == 3:  # rows 1 and 4 finish: both paths drop them
                keep = torch.tensor([0, 2, 3, 5, 6])
                decoder.keep(keep)
                cache.batch_select_indices(keep)
                attn_nL, pos_n = attn_nL[keep], pos_n[keep]
            tok_n = torch.randint(3, len(tok), (attn_nL.shape[0],), generator=gen)
            attn_nL = torch.cat([attn_nL, attn_nL.new_ones(attn_nL.shape[0], 1)], dim=1)
            ref = model(
                input_ids=tok_n[:, None],
                attention_mask=attn_nL,
                position_ids=pos_n[:, None],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            got = decoder.step(tok_n, pos_n, attn_nL[:, None, None, :])
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
            assert ref.std() > 0.01  # random weights give spread logits: a wrong path would not agree
            pos_n = pos_n + 1


@pytest.mark.parametrize("experts", [False, True], ids=["attention-mlp", "with-experts"])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_fused_step_with_lora_adapters(tiny_random_model_dir, family, experts):
    # r1kit's LoRA (peft) wraps the model and swaps projections (and, with lora_target_experts, the fused experts)
    # for adapter layers: the fused step calls those as modules. The adapters get non-zero weights, so a step that
    # skipped one would give other logits.
    base, tok = _load(tiny_random_model_dir(family))
    with torch.inference_mode():
        cache, attn_nL, pos_n = _prefill(base, tok, PROMPTS, [2, 1, 2])
    model = apply_lora(base, ModelConfig(lora_target_experts=experts)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    assert unsupported(model) is None
    tok_n = torch.tensor([5, 6, 7, 8, 9])
    attn_nL = torch.cat([attn_nL, attn_nL.new_ones(5, 1)], dim=1)
    kw = dict(input_ids=tok_n[:, None], attention_mask=attn_nL, position_ids=pos_n[:, None], use_cache=True)
    with torch.inference_mode():
        decoder = fused_decoder(model, copy.deepcopy(cache), capacity=1)
        with model.disable_adapter():
            base_logits = model(**kw, past_key_values=copy.deepcopy(cache)).logits[:, -1]
        ref = model(**kw, past_key_values=cache).logits[:, -1]
        got = decoder.step(tok_n, pos_n, attn_nL[:, None, None, :])
    assert (ref - base_logits).abs().max() > 1e-2  # the adapters change the logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_fused_step_in_bfloat16(tiny_random_model_dir, family):
    model, tok = _load(tiny_random_model_dir(family), dtype=torch.bfloat16)
    with torch.inference_mode():
        cache, attn_nL, pos_n = _prefill(model, tok, PROMPTS[:2], [2, 2])
        decoder = fused_decoder(model, copy.deepcopy(cache), capacity=2)
        tok_n = torch.tensor([5, 6, 7, 8])
        attn_nL = torch.cat([attn_nL, attn_nL.new_ones(4, 1)], dim=1)
        ref = model(
            input_ids=tok_n[:, None],
            attention_mask=attn_nL,
            position_ids=pos_n[:, None],
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        got = decoder.step(tok_n, pos_n, attn_nL[:, None, None, :])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=0)


def test_rope_as_roll_with_signed_sin_by_hand():
    # x * cos + rotate_half(x) * sin with rotate_half([1, 2, 3, 4]) = [-3, -4, 1, 2]:
    # [0.5, 1, 1.5, 2] + [-30, -80, 10, 40] = [-29.5, -79, 11.5, 42]
    x, cos, sin = torch.tensor([1.0, 2, 3, 4]), torch.full((4,), 0.5), torch.tensor([10.0, 20, 10, 20])
    assert signed_sin(sin).tolist() == [-10, -20, 10, 20]
    assert rope(x, cos, signed_sin(sin)).tolist() == [-29.5, -79, 11.5, 42]


def test_kv_buffers_write_in_place_and_keep_rows():
    keys = [torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)]  # (n, h, L, d)
    kv = KVBuffers(keys, [-keys[0]], capacity=2)
    k, v = kv.write(0, torch.full((2, 1, 2), 100.0), torch.full((2, 1, 2), -100.0))
    assert k.shape == (2, 1, 4, 2) and torch.equal(k[:, :, :3], keys[0]) and (k[:, :, 3] == 100).all()
    assert (v[:, :, 3] == -100).all()
    kv.advance()
    kv.keep(torch.tensor([1]))
    k, _ = kv.write(0, torch.full((1, 1, 2), 7.0), torch.zeros(1, 1, 2))
    assert k.shape == (1, 1, 5, 2)
    assert torch.equal(k[0, 0, :3], keys[0][1, 0]) and (k[0, 0, 3] == 100).all() and (k[0, 0, 4] == 7).all()


def test_fused_decoding_is_used_for_the_families_the_sampler_tests_cover(tiny_random_model_dir):
    for family in ("qwen3_moe", "deepseek_v3"):
        model, _ = _load(tiny_random_model_dir(family))
        assert unsupported(model) is None, family


def test_unsupported_models_fall_back_with_a_reason(tiny_random_model_dir):
    path = tiny_random_model_dir("qwen3_moe")
    model, _ = _load(path)
    assert "training mode" in unsupported(model.train())
    assert "not sdpa" in unsupported(_load(path, attn_implementation="eager")[0])
    assert "no fused decoder" in unsupported(_load(tiny_random_model_dir("olmoe"))[0])
    model.eval()
    handle = model.model.layers[0].mlp.gate.register_forward_hook(lambda *a: None)
    assert "forward hooks" in unsupported(model)
    handle.remove()
    assert unsupported(model) is None


def test_router_control_leaves_no_hook_that_blocks_fused_decode(tiny_random_model_dir):
    # Router telemetry reads routing the training forward returns (rl.moe.capture): no hook outlives that forward.
    model, _ = _load(tiny_random_model_dir("qwen3_moe"))
    control = attach_router_control(model, MoEConfig(telemetry=True))
    assert control.sites and control.wants_routing
    assert unsupported(model) is None


def test_sampling_threads_are_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_sampling_threads_must_be_positive():
    with pytest.raises(ValueError, match="rollout.torch_threads"):
        RolloutConfig(torch_threads=0)
