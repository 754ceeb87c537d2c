"""r1kit vs ``trl.GRPOTrainer`` at equal settings on a pre-trained tiny MoE; prints JSON.

Each (engine, repeat) runs in its own subprocess (this script re-invokes itself with ``--engine``), so peak RSS
(``ru_maxrss``) is per engine and no engine warms caches for the other; the order alternates across repeats
(r1kit first on even repeats, TRL first on odd ones) to cancel drift in machine load. A step is timed end to
end: generate, score, compute advantages, forward/backward, optimizer step (TRL: ``on_step_begin`` to
``on_step_end``, which excludes its logging; r1kit: ``train_step`` including its metrics). The first
``--warmup`` steps of each run are left out of the timings; step time is the median over the other steps of all
repeats. Both engines see the same prompts in the same order, start from the same seed per repeat, and their
trained models are evaluated the same way (r1kit's greedy held-out evaluation).

What maps to what (everything not listed is off in both or equal by default)::

    r1kit                                   TRL GRPOConfig
    algorithm.batch_size = P*G              per_device_train_batch_size = P*G, gradient_accumulation_steps = 1
                                            (so generation_batch_size = P*G: one generation per optimizer step)
    algorithm.num_generations = G           num_generations = G
    algorithm.num_iterations = 1            num_iterations = 1 (neither recomputes old log-probs)
    algorithm.loss = grpo|dapo|dr_grpo      loss_type = same name (same aggregation)
    algorithm.std_scale = group             scale_rewards = "group" (both: (r - mean) / (std + 1e-4))
    algorithm.clip_low/high = 0.2           epsilon = 0.2, epsilon_high = 0.2
    algorithm.beta = 0                      beta = 0.0 (no reference model)
    rollout.max_new_tokens                  max_completion_length
    rollout.temperature/top_p/top_k         temperature/top_p/top_k (TRL: use_vllm False, transformers generate)
    model.finetune = full                   full fine-tuning (no peft_config)
    model.dtype (--dtype), no autocast      model loaded in --dtype; bf16 = (--dtype == bfloat16) (TRL's default
                                            bf16=True would autocast float32 weights to bf16, on CPU too)
    training.device (--device)              use_cpu = (--device == cpu)
    moe.router_aux_loss_coef = 0            router_aux_loss_coef = 0.0
    moe.telemetry = true (its default)      (TRL computes no routing statistics: r1kit does more; --no-telemetry)
    (no activation checkpointing: default)  gradient_checkpointing = False (TRL's default is True)
    logging.rollouts_every = 0              log_completions = False (neither stores the step's completions)
    training.lr, adam_betas, max_grad_norm  learning_rate, adam_beta1/2, max_grad_norm; constant schedule, no warmup
    rewards.rules (names + weights)         reward_funcs (the same r1kit objects) + reward_weights
    torch.set_num_threads(--threads)        the same, in its own process
    rollout.torch_threads (--sample-threads) (no TRL setting: r1kit's threads while sampling, within --threads)

``--defaults`` instead runs each engine on its own defaults apart from the task (model, data, rewards, G, batch,
completion length, steps): r1kit's LoRA at its LR and TRL's full fine-tuning at 1e-6 with bf16 autocast and
activation checkpointing, for example. That is what a new user of each gets, not a comparison of equal work.

Usage: ``python benchmarks/vs_trl.py [--model tiny://deepseek_v3/arith --repeats 4 --threads 1 --json out.json]``.
On a GPU, a few-hundred-million-parameter MoE from config, bf16 (rewards carry no signal with random weights)::

    SIZE=hidden_size=1024,num_hidden_layers=12,num_attention_heads=16,num_key_value_heads=4,head_dim=64
    python benchmarks/vs_trl.py --device cuda --dtype bfloat16 --steps 6 --warmup 1 --repeats 2 --max-new-tokens 256 \
        --random-init $SIZE,num_experts=24,num_experts_per_tok=4,moe_intermediate_size=512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

ENGINES = ("r1kit", "trl")
EVAL_SEED, NUM_EVAL = 1234, 256  # the recipe defaults: the cached tiny base was built for this eval split


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        default="tiny://qwen3_moe/arith",
        help="tiny://family/task, pre-trained on first use (the issue's setting is Qwen3-MoE; "
        "docs/performance.md also reports tiny://deepseek_v3/arith)",
    )
    p.add_argument(
        "--random-init",
        metavar="K=V,...",
        help="time a randomly initialised model of the --model family instead, with these config overrides "
        "(e.g. hidden_size=256); rewards are then meaningless and completions run to the cap (for scaling curves)",
    )
    p.add_argument("--steps", type=int, default=20, help="RL steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps of each run left out of the timings")
    p.add_argument("--last", type=int, default=5, help="reward = mean over this many last steps")
    p.add_argument("--repeats", type=int, default=4, help="runs per engine (seeds 0..repeats-1), order alternating")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--loss", default="grpo", choices=("grpo", "dapo", "dr_grpo"))
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in each engine's process. 1 by default: on a 2-core machine shared with other "
        "jobs, 2 OpenMP threads per process spend most of a step waiting in barriers for a descheduled "
        "thread (docs/performance.md); use 2 on a quiet machine",
    )
    p.add_argument(
        "--sample-threads",
        type=int,
        help="r1kit's rollout.torch_threads: its threads while sampling (default: --threads). Within the "
        "same --threads budget; TRL has no such setting",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both engines run")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="weights dtype of both engines (bfloat16 for the GPU comparison)",
    )
    p.add_argument(
        "--trl-default-autocast",
        action="store_true",
        help="leave TRL's own default on: GRPOConfig(bf16=True) autocasts its training forward to bf16, on "
        "CPU too, while r1kit stays in --dtype. NOT equal settings: for comparing the two as a new user "
        "would run them",
    )
    p.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="leave TRL's default activation checkpointing on (GRPOConfig(gradient_checkpointing=True)); r1kit "
        "has none. NOT equal settings: it shows what that default costs TRL",
    )
    p.add_argument(
        "--no-telemetry",
        action="store_true",
        help="turn r1kit's router telemetry off (on by default, as in every recipe; TRL computes none)",
    )
    p.add_argument(
        "--defaults",
        action="store_true",
        help="each engine on its own defaults apart from the task (model, data, rewards, G, batch, completion "
        "length, steps): what a new user of each gets. NOT equal settings",
    )
    p.add_argument("--engines", default="r1kit,trl", help="comma-separated subset of r1kit,trl")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out greedy evaluation after training")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # child mode: run one engine, print JSON
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings(a: argparse.Namespace) -> dict:
    task = {
        "mode": "defaults" if a.defaults else "equal",
        "model": a.model,
        "steps": a.steps,
        "warmup_steps_untimed": a.warmup,
        "reward_last_steps": a.last,
        "repeats": a.repeats,
        "prompts_per_step": a.prompts,
        "num_generations": a.num_generations,
        "batch_size": a.prompts * a.num_generations,
        "max_new_tokens": a.max_new_tokens,
        "rewards": REWARD_RULES,
        "threads": a.threads,
        "device": a.device,
    }
    if a.defaults:  # everything else is each engine's own default
        return task | {"r1kit_telemetry": True, "trl_gradient_checkpointing": True, "trl_bf16_autocast": True}
    return task | {
        "temperature": a.temperature,
        "top_p": a.top_p,
        "top_k": a.top_k,
        "lr": a.lr,
        "loss": a.loss,
        "beta": 0.0,
        "num_iterations": 1,
        "scale_rewards": "group",
        "clip": 0.2,
        "finetune": "full",
        "adam_betas": [0.9, 0.999],
        "max_grad_norm": 1.0,
        "lr_schedule": "constant",
        "r1kit_sample_threads": a.sample_threads or a.threads,
        "dtype": a.dtype,
        "r1kit_telemetry": not a.no_telemetry,
        "trl_gradient_checkpointing": a.trl_gradient_checkpointing,
        "trl_default_autocast": a.trl_default_autocast,
    }


REWARD_RULES = [("math_accuracy", 1.0), ("r1_format_strict", 0.2)]


# ------------------------------------------------------------------ one engine, in its own process
def arith_sets(*, num_train: int):
    """The arithmetic task with the recipes' held-out split (the one the cached tiny base was built for)."""
    from rollouts.data import load_prompt_sets

    return load_prompt_sets(
        task="arith",
        path=None,
        split="train",
        prompt_column="prompt",
        template="qa",
        num_train=num_train,
        num_eval=NUM_EVAL,
        seed=EVAL_SEED,
    )


def prompt_stream(a: argparse.Namespace) -> list:
    """The training prompts in the order r1kit's sampler takes them: TRL gets them in this order, unshuffled."""
    from rollouts.data import PromptSampler

    sets = arith_sets(num_train=4000)
    return PromptSampler(sets.train, seed=a.seed).take(a.steps * a.prompts)


def r1kit_recipe(a: argparse.Namespace, out_dir: str):
    from rl.config import load_recipe

    rules = ", ".join(f"{{name: {n}, weight: {w}}}" for n, w in REWARD_RULES)
    task = [
        f"model.name_or_path={a.model}",
        "data.task=arith",
        "data.template=qa",
        f"data.num_eval={NUM_EVAL}",
        f"data.seed={EVAL_SEED}",
        f"rollout.max_new_tokens={a.max_new_tokens}",
        f"algorithm.num_generations={a.num_generations}",
        f"algorithm.batch_size={a.prompts * a.num_generations}",
        f"rewards.rules=[{rules}]",
        f"training.seed={a.seed}",
        f"training.torch_threads={a.threads}",
        f"training.device={a.device}",
        "logging.progress=false",
        f"logging.output_dir={out_dir}",
    ]
    if a.defaults:
        return load_recipe(None, task)
    return load_recipe(
        None,
        [
            *task,
            "model.finetune=full",
            f"rollout.temperature={a.temperature}",
            f"rollout.top_p={a.top_p}",
            f"rollout.top_k={a.top_k}",
            f"algorithm.loss={a.loss}",
            "algorithm.beta=0.0",
            "algorithm.num_iterations=1",
            "algorithm.std_scale=group",
            f"training.lr={a.lr}",
            "training.adam_betas=[0.9, 0.999]",
            "training.max_grad_norm=1.0",
            "training.warmup_steps=0",
            "training.lr_schedule=constant",
            f"rollout.torch_threads={a.sample_threads or 'null'}",
            f"model.dtype={a.dtype}",
            # r1kit's default (TRL computes no routing telemetry): r1kit does the extra work
            f"moe.telemetry={str(not a.no_telemetry).lower()}",
            "logging.rollouts_every=0",  # TRL (log_completions=False) stores no completions
        ],
    )


def run_r1kit(a: argparse.Namespace) -> dict:
    from rl.trainer import GRPOTrainer

    out_dir = tempfile.mkdtemp(prefix="vs_trl_r1kit_")
    trainer = GRPOTrainer(r1kit_recipe(a, out_dir), out_dir)
    stream = prompt_stream(a)
    assert [p.prompt_id for p in trainer.sampler.take(len(stream))] == [p.prompt_id for p in stream]
    trainer.sampler.position = 0
    same_random_state(a.seed)
    steps = []
    for _ in range(a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        m = trainer.train_step()
        trainer.step += 1
        trainer.metrics_log.append({"step": trainer.step, **m})
        dt = time.perf_counter() - t0
        steps.append(
            {
                "s": dt,
                "reward": m["reward"],
                "accuracy": m["reward/math_accuracy"],
                "tokens": m["completion_len"] * a.prompts * a.num_generations,
                "cpu_s": time.process_time() - c0,
                **{f"t_{k}": m[f"time/{k}"] for k in ("generate", "reward", "train")},
            }
        )
    peak = peak_rss_mb()
    gpu_peak = peak_gpu_mb()
    ev = None if a.no_eval else trainer.evaluate()["accuracy"]
    return {"steps": steps, "peak_rss_mb": peak, "peak_gpu_mb": gpu_peak, "eval_accuracy": ev}


def run_trl(a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards import REWARDS
    from rl.zoo.pretraining import ensure_tiny_base

    torch.set_num_threads(a.threads)
    path = (
        ensure_tiny_base(a.model, eval_seed=EVAL_SEED, n_eval=NUM_EVAL) if a.model.startswith("tiny://") else a.model
    )
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, a.dtype))
    data = Dataset.from_list([{"prompt": p.text, **p.columns} for p in prompt_stream(a)])
    steps: list[dict] = []
    batch: dict = {}

    def recording(name, fn):
        def reward(prompts, completions, completion_ids, **kw):
            vals = fn(prompts, completions, completion_ids=completion_ids, **kw)
            batch[name] = vals
            batch["tokens"] = sum(len(c) for c in completion_ids)
            return vals

        reward.__name__ = name
        return reward

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, *rest, **kwargs):
            if state.global_step == 0:  # after the data loader drew its worker seed, before the first generate
                same_random_state(a.seed)
            batch.clear()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *args, **kwargs):
            dt, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            total = [sum(w * batch[n][i] for n, w in REWARD_RULES) for i in range(len(batch["math_accuracy"]))]
            steps.append(
                {
                    "s": dt,
                    "cpu_s": cpu,
                    "reward": sum(total) / len(total),
                    "tokens": batch["tokens"],
                    "accuracy": sum(batch["math_accuracy"]) / len(total),
                }
            )

    task = dict(
        output_dir=tempfile.mkdtemp(prefix="vs_trl_trl_"),
        use_cpu=a.device == "cpu",
        seed=a.seed,
        data_seed=a.seed,
        per_device_train_batch_size=a.prompts * a.num_generations,
        num_generations=a.num_generations,
        max_completion_length=a.max_new_tokens,
        max_steps=a.steps,
        shuffle_dataset=False,
        reward_weights=[w for _, w in REWARD_RULES],
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    args = GRPOConfig(**task) if a.defaults else equal_trl_config(a, task)
    funcs = [recording(n, REWARDS.get(n)) for n, _ in REWARD_RULES]
    trainer = GRPOTrainer(
        model=model, processing_class=tok, reward_funcs=funcs, args=args, train_dataset=data, callbacks=[StepTimer()]
    )
    trainer.train()
    peak = peak_rss_mb()
    gpu_peak = peak_gpu_mb()
    ev = None if a.no_eval else evaluate_like_r1kit(a, model, tok)
    return {"steps": steps, "peak_rss_mb": peak, "peak_gpu_mb": gpu_peak, "eval_accuracy": ev}


def equal_trl_config(a: argparse.Namespace, task: dict):
    """TRL's GRPOConfig at r1kit's settings: every TRL default that differs is set here (and listed in the module
    docstring)."""
    from trl import GRPOConfig

    return GRPOConfig(
        **task,
        # GRPOConfig turns bf16 autocast on by default (on CPU too): equal settings means the weights' dtype only
        bf16=a.dtype == "bfloat16" or a.trl_default_autocast,
        fp16=False,
        # GRPOConfig turns activation checkpointing on by default; r1kit's default is off
        gradient_checkpointing=a.trl_gradient_checkpointing,
        gradient_accumulation_steps=1,
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        weight_decay=0.0,
        max_grad_norm=1.0,
        loss_type=a.loss,
        beta=0.0,
        num_iterations=1,
        epsilon=0.2,
        epsilon_high=0.2,
        scale_rewards="group",
        use_vllm=False,
        router_aux_loss_coef=0.0,
    )


def same_random_state(seed: int) -> None:
    """Both engines start their first step from this random state (setting up consumes random numbers differently
    in each), so their first step samples the same completions and later steps diverge only through float rounding
    in the updates: the reward comparison is paired, not two unrelated random streams."""
    import torch

    torch.manual_seed(seed)


def evaluate_like_r1kit(a: argparse.Namespace, model, tokenizer) -> float:
    """Held-out greedy accuracy with r1kit's own evaluation code, so both engines' models are scored alike."""
    from rewards.scoring import RewardScorer, RewardSpec, bind_rewards
    from rollouts.backends import TransformersBackend

    sets = arith_sets(num_train=1)
    scorer = RewardScorer(bind_rewards([RewardSpec("math_accuracy")], ["answer"]))
    backend = TransformersBackend(model, tokenizer, max_new_tokens=a.max_new_tokens)
    batch = backend.generate(sets.eval, list(range(len(sets.eval))), num_generations=1, greedy=True)
    vals = scorer.score(batch.prompt_texts, batch.texts, batch.columns())["math_accuracy"].values
    return sum(v or 0.0 for v in vals) / len(vals)


def build_random_model(a: argparse.Namespace) -> tuple[str, int]:
    """A randomly initialised model of ``--model``'s family with ``--random-init`` overrides, saved to a temp dir."""
    from rl.zoo.models import build_char_tokenizer, parse_tiny_ref, tiny_model

    family, _ = parse_tiny_ref(a.model)
    overrides = {}
    for kv in filter(None, a.random_init.split(",")):
        k, v = kv.split("=")
        overrides[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    tok = build_char_tokenizer()
    model = tiny_model(family, tok, seed=0, **overrides)
    out = tempfile.mkdtemp(prefix=f"vs_trl_{family}_")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


# ------------------------------------------------------------------ the comparison
def child(a: argparse.Namespace, engine: str, seed: int) -> dict:
    argv = [sys.executable, __file__, *_forwarded(a), "--engine", engine, "--seed", str(seed)]
    load = os.getloadavg()[0]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"{engine} run (seed {seed}) failed with exit code {proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_before"], out["load_after"] = load, os.getloadavg()[0]
    return out


def _forwarded(a: argparse.Namespace) -> list[str]:
    flags = [
        "--model",
        a.model,
        "--steps",
        a.steps,
        "--warmup",
        a.warmup,
        "--prompts",
        a.prompts,
        "--num-generations",
        a.num_generations,
        "--max-new-tokens",
        a.max_new_tokens,
        "--temperature",
        a.temperature,
        "--top-p",
        a.top_p,
        "--top-k",
        a.top_k,
        "--lr",
        a.lr,
        "--loss",
        a.loss,
        "--threads",
        a.threads,
        "--device",
        a.device,
        "--dtype",
        a.dtype,
    ]
    return (
        [str(x) for x in flags]
        + ([] if a.sample_threads is None else ["--sample-threads", str(a.sample_threads)])
        + (["--no-eval"] if a.no_eval else [])
        + (["--trl-default-autocast"] if a.trl_default_autocast else [])
        + (["--no-telemetry"] if a.no_telemetry else [])
        + (["--trl-gradient-checkpointing"] if a.trl_gradient_checkpointing else [])
        + (["--defaults"] if a.defaults else [])
    )


def summarise(a: argparse.Namespace, runs: dict[str, list[dict]]) -> dict:
    out: dict = {}
    for engine, rs in runs.items():
        timed = [s for r in rs for s in r["steps"][a.warmup :]]
        per_run = [statistics.median(s["s"] for s in r["steps"][a.warmup :]) for r in rs]
        rewards = [statistics.mean(s["reward"] for s in r["steps"][-a.last :]) for r in rs]
        accs = [statistics.mean(s["accuracy"] for s in r["steps"][-a.last :]) for r in rs]
        out |= {
            f"{engine}_step_s": statistics.median(s["s"] for s in timed),
            f"{engine}_step_s_per_repeat": per_run,
            f"{engine}_reward": statistics.mean(rewards),
            f"{engine}_reward_per_repeat": rewards,
            f"{engine}_reward_first_steps": statistics.mean(s["reward"] for r in rs for s in r["steps"][: a.last]),
            f"{engine}_accuracy": statistics.mean(accs),
            f"{engine}_peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            f"{engine}_peak_gpu_mb": max((r.get("peak_gpu_mb") or 0.0) for r in rs) or None,
            f"{engine}_tokens_per_s": sum(s["tokens"] for s in timed) / sum(s["s"] for s in timed),
        }
        # CPU time of the process per step: far less sensitive than wall time to other jobs on a shared machine.
        out[f"{engine}_step_cpu_s"] = statistics.median(s["cpu_s"] for s in timed)
        parts = [k for k in ("t_generate", "t_reward", "t_train") if k in timed[0]]
        if parts:  # where r1kit's step goes (TRL's breakdown: docs/performance.md, from a py-spy profile)
            out[f"{engine}_step_breakdown_s"] = {k[2:]: statistics.median(s[k] for s in timed) for k in parts}
        evals = [r["eval_accuracy"] for r in rs if r["eval_accuracy"] is not None]
        if evals:
            out[f"{engine}_eval_accuracy"] = statistics.mean(evals)
            out[f"{engine}_eval_accuracy_per_repeat"] = evals
        out[f"{engine}_load_avg"] = [r["load_before"] for r in rs]
    if "r1kit_step_s" in out and "trl_step_s" in out:
        out["speedup"] = out["trl_step_s"] / out["r1kit_step_s"]
        out["speedup_cpu"] = out["trl_step_cpu_s"] / out["r1kit_step_cpu_s"]
        out["speedup_per_repeat"] = [
            t / r for t, r in zip(out["trl_step_s_per_repeat"], out["r1kit_step_s_per_repeat"], strict=True)
        ]
        # Noise of the reward: the spread of one engine's per-repeat rewards (different seeds, same settings).
        spread = [statistics.stdev(out[f"{e}_reward_per_repeat"]) for e in ENGINES if len(runs[e]) > 1]
        out["reward_noise_std"] = max(spread) if spread else None
    out["settings"] = settings(a)
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), **_versions()}
    return out


def _versions() -> dict:
    import torch
    import transformers

    v = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl

        v["trl"] = trl.__version__
    except ImportError:
        pass
    return v


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.engine:  # child: one engine, one seed
        result = (run_r1kit if a.engine == "r1kit" else run_trl)(a)
        print(json.dumps(result))
        return
    info = {"model": a.model}
    if a.random_init is None and a.model.startswith("tiny://"):
        from rl.zoo.pretraining import ensure_tiny_base

        # Built here, not in the first child: pre-training would count towards that engine's peak RSS.
        info["params"] = json.loads(
            (ensure_tiny_base(a.model, eval_seed=EVAL_SEED, n_eval=NUM_EVAL) / "r1kit_tiny.json").read_text()
        )["params"]
    if a.random_init is not None:
        a.model, params = build_random_model(a)
        a.no_eval = True
        info |= {"random_init": a.random_init, "params": params}
    engines = [e for e in ENGINES if e in a.engines.split(",")]
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for rep in range(a.repeats):
        for engine in engines if rep % 2 == 0 else engines[::-1]:
            runs[engine].append(child(a, engine, rep))
            med = statistics.median(s["s"] for s in runs[engine][-1]["steps"][a.warmup :])
            print(f"repeat {rep} {engine}: median step {med:.3f} s", file=sys.stderr)
    result = summarise(a, runs)
    result["settings"] |= info
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
