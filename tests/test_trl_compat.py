"""r1kit rewards are plain TRL reward functions: the same objects work in ``trl.GRPOTrainer``."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")


@pytest.mark.slow
def test_math_accuracy_runs_inside_trl_grpo_trainer(tiny_random_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rewards import math_accuracy, r1_format_strict

    path = tiny_random_model_dir("qwen3_moe")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    data = Dataset.from_list([{"prompt": f"Q: {i}+1\nA:", "answer": str(i + 1)} for i in range(8)])
    calls = []

    def spy(prompts, completions, **kwargs):  # records what TRL passes, then defers to the r1kit object itself
        calls.append(kwargs)
        return math_accuracy(prompts=prompts, completions=completions, **kwargs)

    spy.__name__ = "spy"
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tok,
        reward_funcs=[spy, math_accuracy, r1_format_strict],
        args=args,
        train_dataset=data,
    )
    trainer.train()
    assert calls and "answer" in calls[0], "TRL passes dataset columns by name, as r1kit does"
    extras = {"completion_ids", "trainer_state", "log_metric", "log_extra"}
    assert extras <= set(calls[0]), "TRL passes the extras r1kit passes"
    for name in ("math_accuracy", "r1_format_strict"):
        assert [h for h in trainer.state.log_history if any(name in k for k in h)], f"TRL logged {name} by its name"
