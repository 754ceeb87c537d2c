"""GRPO step cost of a larger MoE built from config (no download): step time, tokens/s and peak memory, as JSON.

The weights are random, so completions run to ``--max-new-tokens`` (the worst case for generation) and rewards
carry no signal; what is measured is the cost of a full step: sampling, scoring, old-policy forward, update.

    python benchmarks/moe_scale.py --family qwen3_moe --hidden 1024 --layers 12 --experts 24 --steps 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl.config import load_recipe  # noqa: E402
from rl.trainer import GRPOTrainer  # noqa: E402
from rl.zoo.models import build_char_tokenizer, tiny_model  # noqa: E402


def build(args, out: Path) -> int:
    tok = build_char_tokenizer()
    sizes = {
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.hidden // 64,
        "num_key_value_heads": max(args.hidden // 256, 1),
        "moe_intermediate_size": args.hidden // 2,
        "intermediate_size": args.hidden * 2,
        "max_position_embeddings": 4096,
    }
    if args.family == "deepseek_v3":
        sizes.update(
            n_routed_experts=args.experts,
            num_key_value_heads=args.hidden // 64,
            kv_lora_rank=256,
            qk_rope_head_dim=32,
            qk_nope_head_dim=32,
            v_head_dim=64,
            n_group=4,
            topk_group=2,
        )
    elif args.family == "mixtral":
        sizes.update(num_local_experts=args.experts, intermediate_size=args.hidden // 2)
    else:
        sizes.update(num_experts=args.experts)
        if args.family == "qwen3_moe":
            sizes["head_dim"] = 64
    model = tiny_model(args.family, tok, num_experts_per_tok=args.top_k, **sizes)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="qwen3_moe")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--experts", type=int, default=24)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--finetune", default="full", choices=["full", "lora"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        n_params = build(args, Path(tmp) / "model")
        cfg = load_recipe(
            None,
            [
                f"model.name_or_path={Path(tmp) / 'model'}",
                f"model.dtype={args.dtype}",
                f"model.finetune={args.finetune}",
                "data.num_train=512",
                "data.num_eval=0",
                f"rollout.max_new_tokens={args.max_new_tokens}",
                f"algorithm.num_generations={args.num_generations}",
                f"algorithm.batch_size={args.batch}",
                "training.lr=1e-6",
                "logging.progress=false",
                *args.set,
            ],
        )
        trainer = GRPOTrainer(cfg, Path(tmp) / "run")
        cuda = trainer.device.type == "cuda"
        times, tokens, phases = [], [], []
        for i in range(args.steps + 1):  # the first step warms up kernels and allocators: not counted
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            m = trainer.train_step()
            trainer.step += 1
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
                tokens.append(m["completion_len"] * args.batch)
                phases.append({k: m[k] for k in ("time/generate", "time/reward", "time/train") if k in m})
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "family": args.family,
        "params_m": round(n_params / 1e6, 1),
        "dtype": args.dtype,
        "finetune": args.finetune,
        "batch": args.batch,
        "num_generations": args.num_generations,
        "max_new_tokens": args.max_new_tokens,
        "step_s_median": statistics.median(times),
        "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, times, strict=True)),
        "phase_s_median": {k: statistics.median(ph[k] for ph in phases) for k in phases[0]},
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "steps_timed": len(times),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
