"""Every fast path against the straightforward reference it replaces (STYLE.md habit 7).

- ``rollouts.sampler.sample`` vs ``model.generate``: the same tokens under the same seed (sampling with
  temperature / top-k / top-p, greedy), with left padding, shared prompts and rows finishing at different times
  (at EOS or at a stop string).
- its per-token log-probabilities vs the training forward's: equal within float tolerance.
- ``shared_prompt_logprobs`` (each prompt run once) vs the padded forward: equal log-probabilities and gradients.
- ``packed_logprobs`` (real tokens only, one row) vs the padded forward: the same, for every tiny family, with
  uneven completion lengths and LoRA adapters, with and without activation checkpointing.
- the packed forward's router outputs, mapped back to (row, position), vs the padded forward's; experts handed in
  to the packed forward (routing replay) are the ones its layers use.
- a whole trainer step on defaults (router telemetry on) with the fast paths vs one with the reference paths: the
  same metrics and gradients.

Random-weight models: their next-token distributions are nearly flat, so any divergence in the random stream or
the logits shows up as different tokens within a few steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.config import load_recipe
from rl.forward import PolicyForward
from rl.logprobs import can_pack, pack, padded_logprobs, shared_prompt_logprobs
from rl.trainer import GRPOTrainer
from rollouts.backends import TransformersBackend
from rollouts.records import Completion, Prompt, to_tensors
from rollouts.sampler import sample

FAMILIES = ["qwen3_moe", "deepseek_v3"]
PROMPTS = ["Q: 1+2\nA:", "Q: 9+9+9+9+9\nA:", "Q: 4+4+1\nA:"]  # different lengths: left padding


def _load(path, **config):
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, **config).eval(), tok


def _generate_reference(model, tok, prompt_ids, repeats, eos_ids, max_new_tokens, greedy, **sampling):
    """``model.generate`` on the same rows (prompt u repeated ``repeats[u]`` times), cut at the first EOS."""
    rows = [ids for ids, n in zip(prompt_ids, repeats, strict=True) for _ in range(n)]
    P = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (P - len(r)) + r for r in rows])
    attn = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    if not greedy:  # explicit, as the backend passes them: a checkpoint's generation config may default top_k=50
        sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **sampling}
    out = model.generate(
        input_ids=ids,
        attention_mask=attn,
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos_ids,
        **sampling,
    )
    tokens = []
    for gen in out[:, P:].tolist():
        cut = next((i for i, t in enumerate(gen) if t in eos_ids), None)
        tokens.append(gen if cut is None else gen[: cut + 1])
    return tokens


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "sampling",
    [{}, {"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.8, "temperature": 1.3}, {"greedy": True}],
    ids=["plain", "temperature", "top_k", "top_p", "greedy"],
)
def test_sampler_gives_the_tokens_of_generate(tiny_random_model_dir, family, sampling):
    model, tok = _load(tiny_random_model_dir(family))
    prompt_ids = [tok.encode(p) for p in PROMPTS]
    repeats = [4, 3, 1]
    # Many stop tokens: rows finish at different steps, so finished rows leave the sampler's batch early.
    eos_ids = sorted({tok.eos_token_id, *tok.encode("0123456789")})
    greedy = sampling.pop("greedy", False)
    torch.manual_seed(7)
    ref = _generate_reference(model, tok, prompt_ids, repeats, eos_ids, 12, greedy, **sampling)
    torch.manual_seed(7)
    fast = sample(
        model,
        prompt_ids,
        repeats,
        max_new_tokens=12,
        eos_ids=eos_ids,
        pad_id=tok.pad_token_id,
        greedy=greedy,
        **sampling,
    )
    assert fast.tokens == ref
    lengths = {len(t) for t in ref}
    assert len(lengths) > 1 or greedy, "rows must finish at different steps for the test to bite"


@pytest.mark.parametrize(
    ("attn", "prompts"),
    [("eager", PROMPTS), ("sdpa", ["Q: 1+2\nA:", "Q: 3+4\nA:"])],
    ids=["eager-attention", "no-padding"],
)
def test_sampler_gives_the_tokens_of_generate_without_its_own_decode_mask(tiny_random_model_dir, attn, prompts):
    # The sampler passes its own 4-D decode mask only to sdpa models with left padding; otherwise the model builds
    # its mask itself, as under generate.
    model, tok = _load(tiny_random_model_dir("qwen3_moe"), attn_implementation=attn)
    prompt_ids = [tok.encode(p) for p in prompts]
    eos_ids = sorted({tok.eos_token_id, *tok.encode("0123456789")})
    torch.manual_seed(5)
    ref = _generate_reference(model, tok, prompt_ids, [3] * len(prompts), eos_ids, 10, False)
    torch.manual_seed(5)
    fast = sample(model, prompt_ids, [3] * len(prompts), max_new_tokens=10, eos_ids=eos_ids, pad_id=tok.pad_token_id)
    assert fast.tokens == ref


@pytest.mark.parametrize("family", FAMILIES)
def test_backend_samplers_agree_with_groups_split_across_generation_batches(tiny_random_model_dir, family):
    model, tok = _load(tiny_random_model_dir(family))
    prompts = [Prompt(str(i), p) for i, p in enumerate(PROMPTS)]
    out = {}
    for sampler in ("generate", "r1kit"):
        # batch_size 5 with G = 4: the second generation batch holds the end of one group and the start of another
        backend = TransformersBackend(model, tok, max_new_tokens=8, top_k=20, batch_size=5, sampler=sampler)
        torch.manual_seed(3)
        out[sampler] = backend.generate(prompts, [0, 1, 2], num_generations=4)
    assert [c.token_ids for c in out["r1kit"].completions] == [c.token_ids for c in out["generate"].completions]
    assert out["r1kit"].texts == out["generate"].texts
    assert [c.finish_reason for c in out["r1kit"].completions] == [
        c.finish_reason for c in out["generate"].completions
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_backend_samplers_agree_with_stop_strings(tiny_random_model_dir, family):
    # Rows hit the stop strings at different steps: the r1kit sampler (fused decode on) drops them from its batch,
    # generate keeps sampling them and completion() cuts them back; both must give the same tokens.
    model, tok = _load(tiny_random_model_dir(family))
    prompts = [Prompt(str(i), p) for i, p in enumerate(PROMPTS)]
    stops = ["1", "ab", "e"]  # "1": one character; "ab": two tokens; "e": inside the one-token R1 tags too
    out = {}
    for sampler in ("generate", "r1kit"):
        backend = TransformersBackend(
            model, tok, max_new_tokens=24, top_k=30, batch_size=5, sampler=sampler, stop=stops
        )
        torch.manual_seed(11)
        out[sampler] = backend.generate(prompts, [0, 1, 2], num_generations=4).completions
    assert [c.token_ids for c in out["r1kit"]] == [c.token_ids for c in out["generate"]]
    assert [c.text for c in out["r1kit"]] == [c.text for c in out["generate"]]
    reasons = [c.finish_reason for c in out["r1kit"]]
    assert reasons == [c.finish_reason for c in out["generate"]]
    assert "stop" in reasons and set(reasons) - {"stop"}, f"the test must see rows stop and rows not stop: {reasons}"
    for c in out["r1kit"]:
        assert len(c.logprobs) == c.num_tokens
        assert (c.finish_reason == "stop") == any(s in c.text for s in stops)
        if c.finish_reason == "stop":  # one token earlier the text held no stop string
            assert not any(s in tok.decode(c.token_ids[:-1]) for s in stops)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_logprobs_equal_the_training_forward(tiny_random_model_dir, family):
    model, tok = _load(tiny_random_model_dir(family))
    backend = TransformersBackend(model, tok, max_new_tokens=10, temperature=0.8)
    torch.manual_seed(0)
    batch = backend.generate([Prompt(str(i), p) for i, p in enumerate(PROMPTS)], [0, 1, 2], num_generations=3)
    seq = to_tensors(batch.completions, tok.pad_token_id)
    with torch.no_grad():
        ref_BT = padded_logprobs(model, seq, temperature=0.8)[0]
    for i, c in enumerate(batch.completions):
        assert len(c.logprobs) == c.num_tokens
        torch.testing.assert_close(torch.tensor(c.logprobs), ref_BT[i, : c.num_tokens], atol=1e-5, rtol=0)


def _rollout_tensors(model, tok, num_generations=4, shuffle=True):
    backend = TransformersBackend(model, tok, max_new_tokens=10)
    torch.manual_seed(1)
    batch = backend.generate(
        [Prompt(str(i), p) for i, p in enumerate(PROMPTS)], [0, 1, 2], num_generations=num_generations
    )
    seq = to_tensors(batch.completions, tok.pad_token_id)
    # The trainer feeds shuffled mini-batches: rows of a group are not adjacent.
    return seq.select(torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))) if shuffle else seq


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompt_forward_equals_the_padded_forward(tiny_random_model_dir, family):
    model, tok = _load(tiny_random_model_dir(family))
    model.train()
    seq = _rollout_tensors(model, tok)
    weights_BT = torch.randn(seq.completion_mask_BT.shape, generator=torch.Generator().manual_seed(2))
    grads = []
    for share in (False, True):
        model.zero_grad()
        logp_BT = (shared_prompt_logprobs if share else padded_logprobs)(model, seq)[0]
        (logp_BT * weights_BT).sum().backward()
        grads.append(
            (logp_BT.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (ref_BT, ref_g), (fast_BT, fast_g) = grads
    torch.testing.assert_close(fast_BT, ref_BT, atol=1e-5, rtol=0)
    assert (fast_BT[seq.completion_mask_BT == 0] == 0).all()
    assert ref_g.keys() == fast_g.keys()
    for n in ref_g:
        torch.testing.assert_close(fast_g[n], ref_g[n], atol=1e-5, rtol=1e-4, msg=n)


def test_shared_prompt_forward_declines_when_no_prompt_repeats(tiny_random_model_dir):
    model, tok = _load(tiny_random_model_dir("qwen3_moe"))
    seq = _rollout_tensors(model, tok, num_generations=1)
    assert shared_prompt_logprobs(model, seq) is None
    with PolicyForward([], temperature=1.0)(model, seq, layout="shared") as out:  # falls back to the padded forward
        torch.testing.assert_close(out.logp_BT, padded_logprobs(model, seq)[0])


def _uneven(seq, tok, lengths=(10, 3, 7, 1, 10, 5, 2, 9, 4, 10, 6, 8)):
    """``seq`` with its completions cut to uneven lengths (random-weight models never stop on their own)."""
    rows = []
    for i, n in enumerate(lengths):
        P = seq.prompt_len
        prompt = seq.input_ids_BL[i, :P][seq.attention_mask_BL[i, :P].bool()].tolist()
        rows.append(Completion(0, Prompt("p", ""), prompt, seq.completion_ids_BT[i, :n].tolist(), "", "length"))
    return to_tensors(rows, tok.pad_token_id)


def _logprobs_and_grads(model, seq, weights_BT, layout=None):
    """The training forward's log-probs and gradients: ``layout`` forced, or as ``PolicyForward`` chooses."""
    model.zero_grad()
    with PolicyForward([], temperature=1.0)(model, seq, layout=layout) as out:
        logp_BT = out.logp_BT
        (logp_BT * weights_BT).sum().backward()
    return logp_BT.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(fast, ref):
    (fast_BT, fast_g), (ref_BT, ref_g) = fast, ref
    torch.testing.assert_close(fast_BT, ref_BT, atol=1e-5, rtol=0)
    assert ref_g.keys() == fast_g.keys()
    for n in ref_g:
        torch.testing.assert_close(fast_g[n], ref_g[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "olmoe", "mixtral", "qwen2_moe"])
def test_packed_forward_equals_the_padded_forward(tiny_random_model_dir, family):
    model, tok = _load(tiny_random_model_dir(family))
    assert can_pack(model)
    model.train()
    seq = _uneven(_rollout_tensors(model, tok), tok)
    seq.completion_mask_BT[4] = 0  # a row dropped from the loss (DAPO overlong filtering): its tokens still attend
    weights_BT = torch.randn(seq.completion_mask_BT.shape, generator=torch.Generator().manual_seed(2))
    ref = _logprobs_and_grads(model, seq, weights_BT, layout="padded")
    fast_BT, _ = fast = _logprobs_and_grads(model, seq, weights_BT)
    _assert_same(fast, ref)
    assert (fast_BT[seq.completion_mask_BT == 0] == 0).all()
    real_completion_tokens = int(seq.attention_mask_BL[:, seq.prompt_len :].sum())  # row 4's too: out of the loss only
    packed_tokens = pack(seq).input_ids_1N.shape[1]
    assert packed_tokens == real_completion_tokens + sum(len(tok.encode(p)) for p in PROMPTS)  # each prompt once


def test_packed_forward_with_lora_and_under_checkpointing(tiny_random_model_dir, monkeypatch):
    import rl.logprobs
    from rl.config import ModelConfig
    from rl.modeling import apply_lora

    model, tok = _load(tiny_random_model_dir("deepseek_v3"))
    seq = _uneven(_rollout_tensors(model, tok), tok)
    model = apply_lora(model, ModelConfig())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    model.train()
    weights_BT = torch.randn(seq.completion_mask_BT.shape, generator=torch.Generator().manual_seed(2))
    ref = _logprobs_and_grads(model, seq, weights_BT, layout="padded")
    _assert_same(_logprobs_and_grads(model, seq, weights_BT), ref)
    # Checkpointing re-runs every layer in backward: the packed attention must still be the one selected then.
    calls = []
    packed_sdpa = rl.logprobs.packed_sdpa
    monkeypatch.setattr(rl.logprobs, "packed_sdpa", lambda *a, **k: calls.append(1) or packed_sdpa(*a, **k))
    from transformers import AttentionInterface

    AttentionInterface.register(rl.logprobs.PACKED, rl.logprobs.packed_sdpa)
    try:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        assert PolicyForward([], temperature=1.0).layout(model, routing=True) == "packed"
        _assert_same(_logprobs_and_grads(model, seq, weights_BT), ref)
    finally:
        AttentionInterface.register(rl.logprobs.PACKED, packed_sdpa)
    layers = model.config.num_hidden_layers
    assert len(calls) == 2 * layers, "each layer's attention once in the forward and once re-run in backward"


def test_packing_indices_by_hand():
    # Two rows sharing prompt [5, 6] (row 1's prompt left-padded: one row has a 1-token prompt [4]); completions
    # [7, 8], [9] and [3, 2]. Packed row: prompts [5, 6] then [4], then completions 7 8 | 9 | 3 2.
    p = Prompt("p", "")
    seq = to_tensors(
        [
            Completion(0, p, [5, 6], [7, 8], "", "eos"),
            Completion(0, p, [5, 6], [9], "", "eos"),
            Completion(1, p, [4], [3, 2], "", "eos"),
        ],
        pad_id=0,
    )
    k = pack(seq)
    order = k.input_ids_1N[0].tolist()  # torch.unique sorts prompts by (ids, mask): [0, 4] before [5, 6]
    assert order == [4, 5, 6, 7, 8, 9, 3, 2]
    assert k.position_ids_1N[0].tolist() == [0, 0, 1, 2, 3, 2, 1, 2]
    assert k.prompt_B.tolist() == [1, 1, 0]
    assert k.prompt_idx_UP.tolist() == [[0, 8], [1, 2]] and k.prompt_valid_UP.tolist() == [[True, False], [True, True]]
    assert k.comp_idx_BT.tolist() == [[3, 4], [5, 8], [6, 7]]
    # logits kept: the last token of each prompt (packed 0 and 2), then every completion token (3..7)
    assert k.keep_K.tolist() == [0, 2, 3, 4, 5, 6, 7]
    # token 0 is predicted by its prompt's last token (kept index = prompt id), token t by completion token t - 1
    assert k.pred_BT.tolist() == [[1, 2], [1, 4], [0, 5]]  # row 1's t = 1 is padding: any index, masked out
    # (row, position) -> packed index, N = 8 at padding; rows 0 and 1 share prompt tokens 1, 2
    assert k.tokens.index_BL.tolist() == [[1, 2, 3, 4], [1, 2, 5, 8], [8, 0, 6, 7]]
    # packed index -> the first (row, position) holding it, as row * L + position (L = 4)
    assert k.tokens.source_N.tolist() == [2 * 4 + 1, 0, 1, 2, 3, 1 * 4 + 2, 2 * 4 + 2, 2 * 4 + 3]


def test_packing_declines_where_it_would_change_the_result(tiny_random_model_dir):
    assert not can_pack(_load(tiny_random_model_dir("qwen3_moe"), attn_implementation="eager")[0])
    model, tok = _load(tiny_random_model_dir("qwen3_moe"))
    seq = _rollout_tensors(model, tok)
    forward = PolicyForward([], temperature=1.0)
    assert forward.layout(model, routing=True) == "packed"
    # DDP / FSDP: one forward per backward, which the packed layout is (the shared-prompt one runs two)
    assert PolicyForward([], temperature=1.0, single_forward=True).layout(model, routing=False) == "packed"
    with forward(model, seq) as out:
        assert out.layout == "packed"
    assert model.config._attn_implementation == "sdpa"  # restored


REWARD = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_steps_with_fast_paths_equal_reference_paths(tiny_random_model_dir, tmp_path, family, monkeypatch):
    """Two steps each way: the same samples (so the same rewards, exactly) and the same first-update gradients.

    Parameters are not compared after AdamW: it divides by sqrt(v), so a gradient of 1e-9 and one of 2e-9 both
    move a weight by ~lr, and float-rounding differences of near-zero gradients become lr-sized steps.
    """
    runs = []
    for fast in (False, True):
        cfg = load_recipe(
            None,
            [
                f"model.name_or_path={tiny_random_model_dir(family)}",
                "model.finetune=full",
                "data.task=arith",
                "data.num_train=32",
                "data.num_eval=4",
                "rollout.max_new_tokens=10",
                f"rollout.sampler={'r1kit' if fast else 'generate'}",
                "algorithm.num_generations=4",
                "algorithm.batch_size=8",
                f"rewards.rules=[{{name: '{REWARD}'}}]",
                "training.lr=0.01",
                "logging.progress=false",
            ],
        )
        # On defaults (router telemetry on): the fast path must not fall back; the reference runs every row padded.
        monkeypatch.setattr(PolicyForward, "layout", _layout(fast))
        trainer = GRPOTrainer(cfg, tmp_path / f"fast{fast}")
        grads = _record_grads(trainer)
        metrics = [trainer.train_step() for _ in range(2)]
        runs.append((metrics, grads[0]))
    (ref_m, ref_g), (fast_m, fast_g) = runs
    for a, b in zip(ref_m, fast_m, strict=True):
        for k in ("reward", "completion_len", "adv_abs_mean"):
            assert a[k] == b[k], k  # the same samples: the same rewards and lengths, exactly
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4, abs_tol=1e-6)
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-4)
        # telemetry read from the packed forward's routing, mapped back: the padded forward's numbers
        assert math.isclose(a["moe/load_max_over_mean"], b["moe/load_max_over_mean"], rel_tol=1e-2)
    assert ref_g.keys() == fast_g.keys()
    for n in ref_g:
        torch.testing.assert_close(fast_g[n], ref_g[n], atol=1e-5, rtol=1e-4, msg=n)


_CHOOSE_LAYOUT = PolicyForward.layout


def _layout(fast: bool):
    """The trainer's layout choice, required not to be padded (fast path) or forced to padded (reference)."""

    def layout(self, model, *, routing: bool) -> str:
        chosen = _CHOOSE_LAYOUT(self, model, routing=routing)
        assert chosen != "padded" or not fast, "the trainer fell back to the padded layout on the fast path"
        return chosen if fast else "padded"

    return layout


def _record_grads(trainer) -> list[dict[str, torch.Tensor]]:
    """The gradients each optimizer update sees, recorded just before it steps."""
    grads: list[dict[str, torch.Tensor]] = []
    named = list(trainer.policy.model.named_parameters())
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    optimizer.register_step_pre_hook(
        lambda *_: grads.append({n: p.grad.clone() for n, p in named if p.grad is not None})
    )
    return grads


def test_training_after_sampling_with_dynamic_rope(tiny_random_model_dir):
    # Dynamic RoPE re-computes its frequency buffer inside the forward once a sequence outgrows the trained length;
    # done under the sampler's inference_mode, that buffer must not poison the next training forward.
    dynamic = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    model, tok = _load(tiny_random_model_dir("qwen3_moe"), max_position_embeddings=16, rope_parameters=dynamic)
    assert model.config.rope_parameters["rope_type"] == "dynamic"
    backend = TransformersBackend(model, tok, max_new_tokens=24)
    batch = backend.generate([Prompt("a", "Q: 1+2+3+4+5+6\nA:")], [0], num_generations=2)
    model.train()
    with PolicyForward([], temperature=1.0)(model, to_tensors(batch.completions, tok.pad_token_id)) as out:
        logp_BT = out.logp_BT
    logp_BT.sum().backward()
    assert not any(b.is_inference() for b in model.buffers())


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "olmoe", "mixtral", "qwen2_moe"])
def test_packed_routing_maps_back_to_the_padded_forward(tiny_random_model_dir, family):
    """Router outputs of the packed forward, mapped back to (row, position), are the padded forward's: the same
    experts, logits, expert counts and load-balancing loss; and experts handed in to the packed forward are the
    ones its layers use."""
    from rl.moe.control import RouterControl
    from rl.moe.routers import find_routers

    model, tok = _load(tiny_random_model_dir(family))
    seq = _uneven(_rollout_tensors(model, tok), tok)
    sites = find_routers(model)
    forward = PolicyForward(sites, temperature=1.0)
    out, aux = {}, {}
    for layout in ("packed", "padded"):
        ctl = RouterControl(sites, aux_loss_coef=1.0)
        with torch.no_grad(), forward(model, seq, routing=True, layout=layout) as o:
            aux[layout] = ctl.add_aux_loss(torch.zeros(()), {}, o.routing)[1]["moe/aux_loss"]
        out[layout] = o
    assert out["packed"].layout == "packed" and forward.layout(model, routing=True) == "packed"
    real_BL = seq.attention_mask_BL.bool()
    for layer in out["padded"].routing.layers:
        packed, padded = out["packed"].routing, out["padded"].routing
        same = packed.experts_BLK(layer)[real_BL].sort(-1).values == padded.experts_BLK(layer)[real_BL].sort(-1).values
        assert same.all(-1).float().mean() >= 0.99, f"layer {layer}: experts differ beyond near-ties"
        torch.testing.assert_close(packed.real(layer).logits_NE, padded.real(layer).logits_NE, atol=1e-4, rtol=0)
    torch.testing.assert_close(aux["packed"], aux["padded"], atol=1e-4, rtol=1e-3)
    # Replay into the packed forward: hand in experts the router would not choose (its own, shifted by one)
    E = model.config.num_experts if hasattr(model.config, "num_experts") else model.config.n_routed_experts
    forced = {layer: (out["padded"].routing.experts_BLK(layer) + 1) % E for layer in out["padded"].routing.layers}
    with torch.no_grad(), forward(model, seq, replay_BLK=forced, layout="packed") as o:
        pass
    for layer, want_BLK in forced.items():
        assert torch.equal(o.routing.experts_BLK(layer)[real_BL], want_BLK[real_BL])


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_entropy_is_the_same_in_every_layout(tiny_random_model_dir, family):
    """Per-token entropy of the sampling distribution (a logged statistic, as TRL logs it), equal across layouts and
    equal to the entropy computed from the padded forward's full logits."""
    from rl.logprobs import token_entropy

    model, tok = _load(tiny_random_model_dir(family))
    seq = _uneven(_rollout_tensors(model, tok), tok)
    forward = PolicyForward([], temperature=0.7)
    got = {}
    with torch.no_grad():
        for layout in ("packed", "shared", "padded"):
            with forward(model, seq, layout=layout, entropy=True) as out:
                got[layout] = out.entropy_BT
        T = seq.completion_ids_BT.shape[1]
        ids, attn, pos = seq.input_ids_BL, seq.attention_mask_BL, seq.position_ids_BL
        logits_BTV = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -(T + 1) : -1]
    want_BT = token_entropy(logits_BTV, 0.7) * seq.completion_mask_BT
    for layout, ent_BT in got.items():
        torch.testing.assert_close(ent_BT, want_BT, atol=1e-4, rtol=0, msg=layout)
    assert (want_BT[seq.completion_mask_BT.bool()] > 0).all()


def test_router_outputs_are_refused_from_a_two_pass_layout(tiny_random_model_dir):
    from rl.moe.routers import find_routers

    model, tok = _load(tiny_random_model_dir("qwen3_moe"))
    seq = _rollout_tensors(model, tok)
    forward = PolicyForward(find_routers(model), temperature=1.0)
    with pytest.raises(ValueError, match="shared layout runs each router twice"), torch.no_grad():
        with forward(model, seq, routing=True, layout="shared"):
            pass
