"""Peak memory of one training micro-batch as the completion grows, r1kit vs ``trl.GRPOTrainer``; prints JSON.

A micro-batch here is what both trainers run per gradient-accumulation step: the policy forward over prompt +
completion, the per-token log-probabilities and entropy, the GRPO loss and its backward. The model is a randomly
initialised Qwen3-MoE-shaped network (4 layers, hidden 128, 8 experts, top-2) with a realistic vocabulary (102,400
by default: what a [B, T, V] float32 logits tensor costs is the point), so the head dominates, as it does for real
models at long completions.

- r1kit: ``rl.forward.PolicyForward`` (the layout the trainer picks: packed) and the recipe default loss
  (``rl.losses.LOSSES['grpo']``), as ``GRPOTrainer._mini_batch_update`` calls them.
- TRL: ``GRPOTrainer._compute_loss`` (TRL 1.16: its fused, chunked LM head over the whole sequence, the entropy, the
  ``grpo`` loss) on the same tokens, with ``gradient_checkpointing=False`` and no autocast, as r1kit.

Each (engine, length) runs alone in a fresh process. Peak memory is the process's resident high-water mark during
the micro-batch, above what it held before it (``/proc/self/clear_refs`` resets the mark after the model, the
inputs and a warm-up micro-batch at the shortest length are in place), so allocator caches and start-up do not
count. CPU only (the machine this project measures on); on a GPU read ``torch.cuda.max_memory_allocated`` instead.

Usage: ``python benchmarks/memory.py [--lengths 1024,2048,4096,8192 --vocab 102400 --rows 1 --json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LEN = 64
ENGINES = ("r1kit", "trl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="1024,2048,4096,8192", help="completion lengths (tokens), comma-separated")
    p.add_argument("--vocab", type=int, default=102_400)
    p.add_argument("--rows", type=int, default=1, help="completions per micro-batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: ENGINE:LENGTH:MODEL_DIR
    return p.parse_args(argv)


# ------------------------------------------------------------------ one measurement (child process)
def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS


def _tokens(vocab: int, rows: int, length: int):
    import torch

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (rows, PROMPT_LEN), generator=g)
    completion = torch.randint(3, vocab, (rows, length), generator=g)
    return prompt, completion


def r1kit_step(model_dir: str, rows: int, length: int):
    """A closure running one r1kit micro-batch of ``length`` completion tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from rl.forward import PolicyForward
    from rl.losses import LOSSES
    from rollouts.records import Completion, Prompt, to_tensors

    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    forward, loss_fn = PolicyForward([], temperature=1.0), LOSSES.get("grpo")

    def step(n: int) -> None:
        prompt, completion = _tokens(model.config.vocab_size, rows, n)
        p = Prompt("p", "")
        seq = to_tensors(
            [Completion(0, p, prompt[i].tolist(), completion[i].tolist(), "", "length") for i in range(rows)], 0
        )
        adv_B = torch.linspace(-1, 1, rows) if rows > 1 else torch.ones(1)
        model.zero_grad(set_to_none=True)
        with forward(model, seq, entropy=True) as out:
            loss, _ = loss_fn(
                out.logp_BT, out.logp_BT.detach(), adv_B, seq.completion_mask_BT, max_len=n, **loss_fn.resolve()
            )
            loss.backward()

    return step


def trl_step(model_dir: str, rows: int, length: int):
    """A closure running one TRL micro-batch (``GRPOTrainer._compute_loss`` and backward)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="memory_trl_"),
        use_cpu=True,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=length,
        gradient_checkpointing=False,  # TRL's default is True; r1kit has none here
        bf16=False,  # TRL's default autocasts to bf16; r1kit runs the model's float32
        beta=0.0,
        loss_type="grpo",  # r1kit's default loss
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "x"}] * 2),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by transformers' training loop, which is not run here

    def step(n: int) -> None:
        prompt, completion = _tokens(model.config.vocab_size, rows, n)
        inputs = {
            "prompt_ids": prompt,
            "prompt_mask": torch.ones_like(prompt),
            "completion_ids": completion,
            "completion_mask": torch.ones_like(completion),
            "advantages": torch.linspace(-1, 1, rows) if rows > 1 else torch.ones(1),
            "num_items_in_batch": torch.tensor(float(rows * n)),
        }
        trainer.model.zero_grad(set_to_none=True)
        trainer._compute_loss(trainer.model, inputs).backward()

    return step


def child(spec: str, a: argparse.Namespace) -> dict:
    import torch

    engine, length, model_dir = spec.split(":", 2)
    length = int(length)
    torch.set_num_threads(a.threads)
    step = (r1kit_step if engine == "r1kit" else trl_step)(model_dir, a.rows, length)
    step(min(128, length))  # warm-up: lazy imports, kernels, allocator pools; not measured
    before = _rss_mb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    step(length)
    seconds = time.perf_counter() - t0
    return {"peak_mb": round(_rss_mb("VmHWM") - before, 1), "seconds": round(seconds, 2)}


# ------------------------------------------------------------------ the comparison (parent process)
def build_model(vocab: int, max_len: int, out: Path) -> None:
    import torch

    from rl.zoo.models import TINY_FAMILIES, build_char_tokenizer

    tok = build_char_tokenizer()
    config = TINY_FAMILIES.get("qwen3_moe")(
        vocab, max_position_embeddings=max_len, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)


def measure(engine: str, length: int, model_dir: Path, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{engine}:{length}:{model_dir}", "--rows", str(a.rows)]
    cmd += ["--threads", str(a.threads)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} at {length} tokens failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main(argv: list[str] | None = None) -> dict | None:
    a = parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a)))
        return None
    lengths = [int(x) for x in a.lengths.split(",")]
    engines = a.engines.split(",")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="memory_model_") as d:
        build_model(a.vocab, PROMPT_LEN + max(lengths) + 8, Path(d))
        runs = {e: {} for e in engines}
        for n in lengths:
            for e in engines:
                runs[e][str(n)] = measure(e, n, Path(d), a)
                print(f"{e:6s} {n:6d} tokens: {runs[e][str(n)]}", file=sys.stderr)
    result = {
        "benchmark": "memory",
        "settings": {"vocab": a.vocab, "rows": a.rows, "prompt_len": PROMPT_LEN, "threads": a.threads},
        "peak_mb": {e: {n: r["peak_mb"] for n, r in runs[e].items()} for e in engines},
        "seconds": {e: {n: r["seconds"] for n, r in runs[e].items()} for e in engines},
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count()},
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    if set(ENGINES) <= set(engines):
        r, t = result["peak_mb"]["r1kit"], result["peak_mb"]["trl"]
        result["ratio"] = {n: round(r[n] / t[n], 3) for n in r}
        result["ratio_at_max_len"] = result["ratio"][str(max(lengths))]
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
