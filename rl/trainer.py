"""The GRPO trainer: it only orchestrates. Sample groups, score them, turn scores into group-relative advantages,
and update the policy with the loss named in the recipe. Every formula lives in ``rl.advantages``, ``rl.losses``
and ``rl.kl``; this file looks them up by name and calls them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewards.scoring import RewardScorer, bind_rewards
from rl.advantages import ADVANTAGES
from rl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rl.config import RecipeConfig, dump_recipe
from rl.kl import KL_ESTIMATORS
from rl.logprobs import completion_logprobs
from rl.losses import LOSSES, normaliser
from rl.modeling import Policy, load_policy, save_final
from rl.progress import StepProgress, console, summary_table
from rl.runlog import MetricsLog, atomic_write_text
from rollouts.backends import BACKENDS
from rollouts.data import PromptSampler, PromptSets, load_prompt_sets
from rollouts.records import RolloutBatch, SequenceTensors, to_tensors

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(warmup: int, schedule: str, total: int):
    """Multiplier of the peak LR after ``u`` optimizer updates: linear warmup, then constant/cosine/linear decay."""

    def f(u: int) -> float:
        if warmup and u < warmup:
            return (u + 1) / warmup
        frac = min(max(u - warmup, 0) / max(total - warmup, 1), 1.0)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        if schedule == "linear":
            return 1.0 - frac
        return 1.0

    return f


class GRPOTrainer:
    def __init__(self, cfg: RecipeConfig, run_dir: str | Path, *, resume: bool = False) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.training.torch_threads:
            torch.set_num_threads(cfg.training.torch_threads)
        seed_everything(cfg.training.seed)
        self.device = pick_device(cfg.training.device)
        d = cfg.data
        self.data: PromptSets = load_prompt_sets(
            task=d.task, path=d.path, split=d.split, prompt_column=d.prompt_column, template=d.template,
            num_train=d.num_train, num_eval=d.num_eval, seed=d.seed,
        )  # fmt: skip
        # Rewards are bound before the model loads: a missing column fails in seconds, not after a download.
        self.scorer = RewardScorer(
            bind_rewards(cfg.rewards.rules, self.data.columns), max_error_fraction=cfg.rewards.max_error_fraction
        )
        self.policy: Policy = load_policy(cfg.model, d, need_reference=cfg.algorithm.beta > 0, device=self.device)
        r = cfg.rollout
        self.backend = BACKENDS.get(r.backend)(
            self.policy.model, self.policy.tokenizer, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
            top_p=r.top_p, top_k=r.top_k, batch_size=r.generation_batch_size, sampler=r.sampler,
        )  # fmt: skip
        a, t = cfg.algorithm, cfg.training
        self.params = [p for p in self.policy.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),  # one kernel for all tensors: 1.8 vs 4.3 ms on the tiny CPU run
        )  # fmt: skip
        self.updates_per_step = a.num_iterations * (a.batch_size // (a.mini_batch_size or a.batch_size))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(t.warmup_steps, t.lr_schedule, t.max_steps * self.updates_per_step)
        )
        self.loss_fn = LOSSES.get(a.loss)
        self.loss_kwargs = {k: v for k, v in (("clip_low", a.clip_low), ("clip_high", a.clip_high)) if v is not None}
        self.advantage_fn = ADVANTAGES.get(a.advantage)
        self.kl_fn = KL_ESTIMATORS.get(a.kl_estimator) if a.beta > 0 else None
        self.sampler = PromptSampler(self.data.train, seed=t.seed)
        self.metrics_log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.step = 0
        self.base_eval: dict[str, float] | None = None
        self.started = time.time()
        if resume:
            self._resume()

    # ----------------------------------------------------------------- run
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        atomic_write_text(self.run_dir / "config.yaml", dump_recipe(cfg))
        if self.base_eval is None:
            self.base_eval = self.evaluate()
            console.print(f"base model, held-out greedy: {self._fmt_eval(self.base_eval)}")
        save_every = cfg.logging.save_every
        with StepProgress(cfg.training.max_steps, self.step, enabled=cfg.logging.progress) as progress:
            while self.step < cfg.training.max_steps:
                metrics = self.train_step()
                self.step += 1
                if cfg.logging.eval_every and self.step % cfg.logging.eval_every == 0:
                    metrics.update({f"eval/{k}": v for k, v in self.evaluate().items()})
                self.metrics_log.append({"step": self.step, **metrics})
                progress.update(metrics)
                if save_every and self.step % save_every == 0:
                    self.save_checkpoint()
        if not save_every or self.step % save_every:
            self.save_checkpoint()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        final_eval = self.evaluate()
        save_final(self.policy, self.run_dir / "final")
        summary = {
            "base_accuracy": self.base_eval["accuracy"],
            "final_accuracy": final_eval["accuracy"],
            **{f"base_{k}": v for k, v in self.base_eval.items() if k != "accuracy"},
            **{f"final_{k}": v for k, v in final_eval.items() if k != "accuracy"},
            "steps": self.step,
            "wall_seconds": time.time() - self.started,
            "world_size": 1,
            "eval_prompts": len(self.data.eval),
            "eval_reward": self.cfg.rewards.rules[0].label,
            "model": self.cfg.model.name_or_path,
            "finetune": self.cfg.model.finetune,
            "loss": self.cfg.algorithm.loss,
        }
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        console.print(summary_table(summary))
        return summary

    # ---------------------------------------------------------------- step
    def train_step(self) -> dict[str, Any]:
        a = self.cfg.algorithm
        t0 = time.time()
        prompts = self.sampler.take(a.prompts_per_step)
        group_ids = [self.step * a.prompts_per_step + i for i in range(len(prompts))]  # unique over the run
        batch = self.backend.generate(prompts, group_ids, num_generations=a.num_generations)
        t_gen = time.time()
        scores = self.scorer.score(batch.prompt_texts, batch.texts, batch.columns())
        reward_B = torch.tensor([math.nan if v is None else v for v in scores.total], dtype=torch.float32)
        group_B = torch.tensor(batch.group_ids)
        adv_B = self.advantage_fn(reward_B, group_B, std_scale=a.std_scale)
        t_reward = time.time()
        seq = to_tensors(batch.completions, self.policy.tokenizer.pad_token_id).to(self.device)
        train_metrics = self._update(seq, adv_B.to(self.device), batch)
        t_end = time.time()
        return {
            **reward_metrics(scores, reward_B, group_B),
            **train_metrics,
            **length_metrics(batch),
            "adv_abs_mean": adv_B.abs().mean().item(),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": sum(c.num_tokens for c in batch.completions) / max(t_end - t0, 1e-9),
            "time/generate": t_gen - t0,
            "time/reward": t_reward - t_gen,
            "time/train": t_end - t_reward,
            "time/step": t_end - t0,
        }

    def _logprobs(self, model, seq: SequenceTensors) -> torch.Tensor:
        return completion_logprobs(model, seq, temperature=self.cfg.rollout.temperature)[0]

    @torch.no_grad()
    def _logprobs_nograd(self, model, seq: SequenceTensors) -> torch.Tensor:
        micro = self.cfg.training.micro_batch_size or seq.input_ids_BL.shape[0]
        rows = torch.arange(seq.input_ids_BL.shape[0])
        return torch.cat([self._logprobs(model, seq.select(r)) for r in rows.split(micro)])

    def _update(self, seq: SequenceTensors, adv_B: torch.Tensor, batch: RolloutBatch) -> dict[str, float]:
        a, t = self.cfg.algorithm, self.cfg.training
        model = self.policy.model
        B = seq.input_ids_BL.shape[0]
        mini = a.mini_batch_size or B
        micro = t.micro_batch_size or mini
        # With a single on-policy update, pi_old == pi_theta: the first forward's detached logp *is* old_logp, which
        # saves a forward (the ratio is exactly 1, the gradient is the policy gradient). Otherwise compute it once.
        on_policy = a.num_iterations == 1 and mini == B
        old_logp_BT = None if on_policy else self._logprobs_nograd(model, seq)
        ref_logp_BT = None
        if self.kl_fn is not None:
            with self.policy.as_reference() as ref:
                ref_logp_BT = self._logprobs_nograd(ref, seq)
        mask_BT = seq.completion_mask_BT
        gen = torch.Generator().manual_seed(self.cfg.training.seed * 100_003 + self.step)
        sums: dict[str, float] = defaultdict(float)
        n_updates = 0
        model.train()
        for _ in range(a.num_iterations):
            for mb in torch.randperm(B, generator=gen).split(mini):
                self.optimizer.zero_grad(set_to_none=True)
                unit = mask_BT[mb].sum().clamp(min=1) if normaliser(a.loss) == "tokens" else torch.tensor(len(mb))
                for rows in mb.split(micro):
                    sub = seq.select(rows)
                    logp_BT = self._logprobs(model, sub)
                    old = logp_BT.detach() if on_policy else old_logp_BT[rows]
                    kl_BT = self.kl_fn(logp_BT, ref_logp_BT[rows]) if self.kl_fn else None
                    loss, m = self.loss_fn(
                        logp_BT, old, adv_B[rows], sub.completion_mask_BT, kl_BT=kl_BT, beta=a.beta,
                        max_len=self.cfg.rollout.max_new_tokens, **self.loss_kwargs,
                    )  # fmt: skip
                    share = (sub.completion_mask_BT.sum() if normaliser(a.loss) == "tokens" else len(rows)) / unit
                    (loss * share).backward()
                    sums["loss"] += loss.item() * float(share)
                    for k, v in m.items():
                        sums[k] += v.item() * float(share)
                    if on_policy:
                        for i, r in enumerate(rows.tolist()):
                            n = batch.completions[r].num_tokens
                            batch.completions[r].logprobs = logp_BT[i, :n].detach().cpu().tolist()
                max_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
                sums["grad_norm"] += torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()
                self.optimizer.step()
                self.scheduler.step()
                n_updates += 1
        if not on_policy:
            for r, c in enumerate(batch.completions):
                c.logprobs = old_logp_BT[r, : c.num_tokens].cpu().tolist()
        return {k: v / n_updates for k, v in sums.items()}

    # ---------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the held-out prompts, scored by every reward; ``accuracy`` is the first reward's
        mean (abstentions count as wrong)."""
        prompts = self.data.eval
        if not prompts:
            return {"accuracy": float("nan")}
        batch = self.backend.generate(prompts, list(range(len(prompts))), num_generations=1, greedy=True)
        scores = self.scorer.score(batch.prompt_texts, batch.texts, batch.columns())
        out = {}
        for i, (label, vals) in enumerate(scores.values.items()):
            mean = sum(v or 0.0 for v in vals) / len(vals)
            out["accuracy" if i == 0 else label] = mean
        out["completion_len"] = sum(c.num_tokens for c in batch.completions) / len(batch)
        return out

    @staticmethod
    def _fmt_eval(ev: dict[str, float]) -> str:
        return ", ".join(f"{k}={v:.3f}" for k, v in ev.items())

    # ---------------------------------------------------------- checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        return {"data_position": self.sampler.position, "base_eval": self.base_eval,
                "elapsed": time.time() - self.started}  # fmt: skip

    def save_checkpoint(self) -> Path:
        return save_checkpoint(
            self.run_dir / "checkpoints", self.step, self.policy.model, self.optimizer, self.scheduler,
            self._trainer_state(), keep=self.cfg.logging.keep_checkpoints,
        )  # fmt: skip

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir / "checkpoints")
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s; starting from scratch", self.run_dir)
            return
        state = load_checkpoint(ckpt, self.policy.model, self.optimizer, self.scheduler)
        self.step = state["step"]
        self.sampler.position = state["data_position"]
        self.base_eval = state["base_eval"]
        self.started = time.time() - state.get("elapsed", 0.0)
        self.metrics_log.truncate_after(self.step)
        console.print(f"resumed from {ckpt} (step {self.step})")


def reward_metrics(scores, reward_B: torch.Tensor, group_B: torch.Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    valid = reward_B[~torch.isnan(reward_B)]
    out["reward"] = valid.mean().item() if valid.numel() else math.nan
    out["reward_std"] = valid.std().item() if valid.numel() > 1 else 0.0
    for label, vals in scores.values.items():
        present = [v for v in vals if v is not None]
        out[f"reward/{label}"] = sum(present) / len(present) if present else math.nan
        out[f"reward/{label}/abstain_frac"] = 1 - len(present) / max(len(vals), 1)
        out[f"reward/{label}/errors"] = scores.errors[label]
    # Groups whose rewards are all equal give zero advantage: no learning signal (DAPO's motivation for dynamic
    # sampling). Their share is the first number to look at when reward stops moving.
    stds = [reward_B[group_B == g].nan_to_num(0.0).std().item() for g in group_B.unique()]
    out["frac_groups_zero_std"] = sum(s == 0 for s in stds) / max(len(stds), 1)
    return out


def length_metrics(batch: RolloutBatch) -> dict[str, float]:
    lens = [c.num_tokens for c in batch.completions]
    return {
        "completion_len": sum(lens) / len(lens),
        "completion_len_max": max(lens),
        "truncated_frac": sum(c.finish_reason == "length" for c in batch.completions) / len(lens),
    }


def run_dir_for(cfg: RecipeConfig, recipe_path: str | Path | None, output_dir: str | None) -> Path:
    if output_dir:
        return Path(output_dir)
    if cfg.logging.output_dir:
        return Path(cfg.logging.output_dir)
    return Path("runs") / (Path(recipe_path).stem if recipe_path else "default")
