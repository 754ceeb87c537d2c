"""Output a person reads in a log file: no known-harmless warnings, progress that redraws rarely, whole lines."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from rl.config import DataConfig, ModelConfig


def test_lora_on_a_moe_and_sampling_raise_no_known_harmless_warnings(tiny_random_model_dir):
    from rl.modeling import load_policy
    from rollouts.backends import BACKENDS
    from rollouts.records import Prompt

    cfg = ModelConfig(name_or_path=tiny_random_model_dir("deepseek_v3"), finetune="lora")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = load_policy(cfg, DataConfig(), need_reference=False, device=torch.device("cpu"))
        backend = BACKENDS.get("transformers")(policy.model, policy.tokenizer, max_new_tokens=4, fused_decode=False)
        backend.generate([Prompt("p0", "Q: 1+1\nA:")], [0], num_generations=2)
    texts = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not [t for t in texts if "rank_pattern" in t or "alpha_pattern" in t], texts
    assert not [t for t in texts if "is_gradient_checkpointing" in t or "past_key_values" in t], texts


def test_pretraining_progress_redraws_rarely_in_a_log_file(monkeypatch):
    from rl.config import PretrainConfig
    from rl.zoo.models import build_char_tokenizer, tiny_model
    from rl.zoo.pretraining import pretrain

    log = io.StringIO()  # not a terminal: what `r1kit train > log` sees
    monkeypatch.setattr("sys.stderr", log)
    tok = build_char_tokenizer()
    pretrain(tiny_model("qwen3_moe", tok), tok, [("Q: 1+1\nA:", "2")] * 8, PretrainConfig(steps=40, batch_size=4))
    redraws = log.getvalue().count("\r") + log.getvalue().count("\n")
    assert redraws <= 4, f"{redraws} redraws for 40 steps:\n{log.getvalue()[:500]}"


def test_long_lines_are_not_cut_or_wrapped_in_a_log_file(capsys):
    from rl.reporting.progress import console

    if console.is_terminal:
        pytest.skip("stderr is a terminal here")
    line = "base model, held-out greedy: " + ", ".join(f"reward_{i}=0.{i}00" for i in range(20))
    console.print(line)
    assert capsys.readouterr().err.rstrip("\n") == line
