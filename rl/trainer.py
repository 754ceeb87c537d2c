"""The GRPO trainer: it only orchestrates. Sample groups, score them, turn scores into group-relative advantages,
and update the policy with the loss named in the recipe. Every formula lives in ``rl.advantages``, ``rl.losses``
and ``rl.kl``; this file looks them up by name and calls them.

It runs unchanged under ``accelerate launch`` (one process per device): see ``rl.distributed`` for how the global
batch is split and why the update equals the one-process update. Only process 0 writes files.
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

from core.configio import ConfigError
from core.files import atomic_write_text
from core.metrics import Max, Sum
from rewards.scoring import RewardScorer, RewardScores, bind_rewards, trainer_state
from rl.advantages import ADVANTAGES
from rl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, trainable_state
from rl.config import RecipeConfig, dump_recipe
from rl.correction import rollout_correction, rollout_logp_tensor
from rl.distributed import Dist, dump_weights_for_debug, generate_seeded, make_accelerator
from rl.forward import PolicyForward
from rl.groups import CollectedGroups, collect_groups, mask_rows
from rl.kl import KL_ESTIMATORS
from rl.losses import LOSSES
from rl.memory import HalvingChunks
from rl.metrics import length_metrics, reward_metrics
from rl.modeling import Policy, load_policy, load_tokenizer, resolve_source, save_final
from rl.moe.control import attach_router_control
from rl.optim import make_optimizer
from rl.reporting.progress import StepProgress, console, summary_table
from rl.reporting.trackers import open_trackers
from rl.runlog import MetricsLog
from rl.schedules import make_scheduler
from rollouts.backends import BACKENDS
from rollouts.data import PromptSampler, PromptSets, load_prompt_sets
from rollouts.records import RolloutBatch, SequenceTensors, to_tensors
from rollouts.store import RolloutStore

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class GRPOTrainer:
    def __init__(self, cfg: RecipeConfig, run_dir: str | Path, *, resume: bool = False) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.training.seed)
        accelerator = make_accelerator(cfg.training)
        if cfg.training.torch_threads:  # after accelerate, which may set its own count for CPU processes
            torch.set_num_threads(cfg.training.torch_threads)
        self.dist = Dist(accelerator)
        self.sizes = self.dist.local_sizes(cfg.algorithm, cfg.training)
        self.device = self.dist.device
        self.data = self._load_data(accelerator)
        # Rewards are bound before the model loads: a missing column fails in seconds, not after a download.
        self.scorer = RewardScorer(
            bind_rewards(cfg.rewards.rules, self.data.columns), max_error_fraction=cfg.rewards.max_error_fraction
        )
        with accelerator.main_process_first():  # tiny:// builds and hub downloads happen once
            self.policy: Policy = load_policy(
                cfg.model, cfg.data, need_reference=cfg.algorithm.beta > 0, device=self.device
            )
        r = cfg.rollout
        self.backend = self._make_backend()
        self.moe = attach_router_control(self.policy.model, cfg.moe)  # before collecting params: may freeze routers
        # The one place training-side forwards run (policy, old policy, reference): layout and router outputs.
        self.forward = PolicyForward(
            self.moe.sites, temperature=r.temperature, single_forward=self.dist.world_size > 1
        )
        a, t = cfg.algorithm, cfg.training
        build_optimizer = lambda params: make_optimizer(  # noqa: E731  # float32 masters over bf16 / fp16 weights
            t.optimizer,
            params,
            lr=t.lr,
            betas=t.adam_betas,
            weight_decay=t.weight_decay,
            device=self.device,
            sharded=self.dist.sharded,
        )
        # train_model: the model as wrapped for training (DDP / FSDP / autocast); used for the gradient forward
        # only. policy.model stays the plain module (DDP), for generation, no-grad log-probs and saving; r1kit's own
        # FSDP2 (CPU) shards it in place, so there both are the same sharded module.
        self.train_model, self.optimizer = self.dist.prepare(
            self.policy.model, build_optimizer, mixed_precision=t.mixed_precision
        )
        self.params = [p for p in self.train_model.parameters() if p.requires_grad]
        self.logprob_chunks = HalvingChunks(t.logprob_micro_batch_size or t.micro_batch_size)
        self.updates_per_step = a.num_iterations * (a.batch_size // (a.mini_batch_size or a.batch_size))
        self.scheduler = make_scheduler(  # not prepared: accelerate would step it N times
            self.optimizer,
            schedule=t.lr_schedule,
            warmup_steps=t.warmup_steps,
            total_updates=t.max_steps * self.updates_per_step,
        )
        self.loss_fn = LOSSES.get(a.loss)  # a PolicyLoss: its normaliser and options are declared, not guessed
        self.loss_kwargs = self.loss_fn.resolve(clip_low=a.clip_low, clip_high=a.clip_high)  # None = its default
        self.advantage_fn = ADVANTAGES.get(a.advantage)
        self.kl_fn = KL_ESTIMATORS.get(a.kl_estimator) if a.beta > 0 else None
        self.correction = self._correction_settings()
        self.sampler = PromptSampler(self.data.train, seed=t.seed)  # the same global order on every process
        self.metrics_log = MetricsLog(self.run_dir / "metrics.jsonl")
        lg = cfg.logging
        self.rollout_store = RolloutStore(self.run_dir, every=lg.rollouts_every, max_groups=lg.rollouts_max_groups)
        self.step = 0
        self.base_eval: dict[str, float] | None = None
        self.started = time.time()
        if self.dist.rank > 0:  # own sampling noise per process; process 0 keeps the one-process stream
            seed_everything(t.seed + 1_000_003 * self.dist.rank)
        if resume:
            self._resume()
        self.trackers = open_trackers(  # process 0 only: one W&B / TensorBoard run per training run
            lg.trackers if self.dist.is_main else [],
            self.run_dir,
            cfg.to_dict(),
            project=lg.project,
            run_name=lg.run_name,
            start_step=self.step,
        )

    def _correction_settings(self) -> dict[str, Any]:
        """``rl.correction.rollout_correction``'s keywords for this run (``auto`` resolved for the backend)."""
        a = self.cfg.algorithm
        rc = a.rollout_correction
        out = {"mode": rc.resolved_mode(self.cfg.rollout.backend), "level": rc.level, "cap": rc.cap}
        if out["mode"] != "none" and not self.loss_fn.takes_rollout_weight:
            raise ConfigError(
                f"algorithm.rollout_correction: the {a.loss!r} loss takes no rollout_weight_BT option, so the "
                f"{out['mode']} weights cannot reach it; set algorithm.rollout_correction.mode: none"
            )
        return out

    def _load_data(self, accelerator) -> PromptSets:
        """The recipe's prompts, built once (downloads and dataset caches), then read by the other processes."""
        cfg, d = self.cfg, self.cfg.data
        with accelerator.main_process_first():  # downloads and dataset caches: once, then read by the others
            tokenizer = load_tokenizer(resolve_source(cfg.model, d), cfg.model) if d.template == "chat" else None
            return load_prompt_sets(**d.prompt_set_args(), tokenizer=tokenizer)

    def _make_backend(self):
        """The recipe's generation backend over the plain policy module."""
        r, m = self.cfg.rollout, self.cfg.model
        common = r.backend_options()
        if r.backend == "vllm":
            if self.dist.sharded:
                raise ConfigError(
                    f"rollout.backend: vllm with {self.dist.strategy} sharded weights is not supported: each "
                    "process's engine needs the full weights, gathered after every step; use DDP "
                    "(recipes/accelerate/ddp.yaml) or rollout.backend: transformers"
                )
            return BACKENDS.get("vllm")(
                self.policy.model,
                self.policy.tokenizer,
                source=self.policy.source,
                seed=self.cfg.training.seed + self.dist.rank,  # own sampling noise per process, as the sampler's
                revision=m.revision,
                trust_remote_code=m.trust_remote_code,
                **common,
                **r.vllm.engine_options(),
            )
        return BACKENDS.get(r.backend)(
            self.policy.model,
            self.policy.tokenizer,
            **common,
            sampler=r.sampler,
            # Sharded weights: every forward is collective, so every process decodes in step with the others and
            # through the model's forward (the fused step reads weights directly).
            fused_decode=r.fused_decode and not self.dist.sharded,
            sync=self.dist.any_process if self.dist.sharded and self.dist.world_size > 1 else None,
            threads=r.torch_threads,
        )

    # ----------------------------------------------------------------- run
    def train(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            atomic_write_text(self.run_dir / "config.yaml", dump_recipe(cfg))
        if self.base_eval is None:
            self.base_eval = self.evaluate()
            if main:
                console.print(f"base model, held-out greedy: {self._fmt_eval(self.base_eval)}")
        save_every = cfg.logging.save_every
        with StepProgress(cfg.training.max_steps, self.step, enabled=cfg.logging.progress and main) as progress:
            while self.step < cfg.training.max_steps:
                metrics = self.train_step()
                self.step += 1
                if cfg.logging.eval_every and self.step % cfg.logging.eval_every == 0:
                    metrics.update({f"eval/{k}": v for k, v in self.evaluate().items()})
                if main:
                    self.metrics_log.append({"step": self.step, **metrics})
                    self.trackers.log(self.step, metrics)
                progress.update(metrics)
                if save_every and self.step % save_every == 0:
                    self.save_checkpoint()
        if not save_every or self.step % save_every:
            self.save_checkpoint()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        final_eval = self.evaluate()
        full = self.dist.full_state_dict(self.train_model)  # None unless FSDP / ZeRO-3 shard the weights
        dump_weights_for_debug(trainable_state(self.policy.model, full), self.dist.rank)
        if self.dist.is_main:
            save_final(self.policy, self.run_dir / "final", full)
        summary = {
            "base_accuracy": self.base_eval["accuracy"],
            "final_accuracy": final_eval["accuracy"],
            **{f"base_{k}": v for k, v in self.base_eval.items() if k != "accuracy"},
            **{f"final_{k}": v for k, v in final_eval.items() if k != "accuracy"},
            "steps": self.step,
            "wall_seconds": time.time() - self.started,
            "world_size": self.dist.world_size,
            "distributed_type": self.dist.strategy,
            "eval_prompts": len(self.data.eval),
            "eval_reward": self.cfg.rewards.rules[0].label,
            "model": self.cfg.model.name_or_path,
            "finetune": self.cfg.model.finetune,
            "loss": self.cfg.algorithm.loss,
            "rollout_backend": self.cfg.rollout.backend,
            "rollout_correction": self.correction["mode"],
        }
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            console.print(summary_table(summary))
            self.trackers.close()
            if self.cfg.logging.plots:
                from rl.reporting.plots import write_plots  # matplotlib (~27 MB resident) only when plotting

                console.print(f"plots: {self.run_dir / 'plots'} ({len(write_plots(self.run_dir).written)} PNGs)")
        self.dist.barrier()  # no process exits (and tears the group down) while process 0 still writes
        return summary

    # ---------------------------------------------------------------- step
    def train_step(self) -> dict[str, Any]:
        a = self.cfg.algorithm
        t0 = time.time()
        # DAPO dynamic sampling may take several rounds; reward metrics cover every sampled group (the policy's
        # unfiltered reward), the update only the kept ones.
        sampled = collect_groups(
            self._generate,
            self._score,
            prompts=a.prompts_per_step,
            dynamic=a.dynamic_sampling,
            max_rounds=a.max_sampling_rounds,
        )
        batch, reward_B = sampled.kept, sampled.reward_B[sampled.keep_B]
        group_B = torch.tensor(batch.group_ids)
        adv_B = self.advantage_fn(reward_B, group_B, std_scale=a.std_scale)  # groups are process-local
        t_reward = time.time()
        seq = to_tensors(batch.completions, self.policy.tokenizer.pad_token_id).to(self.device)
        # No total (NaN: a weighted reward abstained or failed, rewards.scoring): advantage 0 already; out of the loss
        # too, so it adds no KL pull and no share of the normaliser - a group with no totals trains on nothing.
        seq.completion_mask_BT = mask_rows(seq.completion_mask_BT, torch.isnan(reward_B))
        if a.mask_truncated:  # DAPO overlong filtering: cut completions leave the loss, not the advantages
            seq.completion_mask_BT = mask_rows(
                seq.completion_mask_BT, torch.tensor([c.finish_reason == "length" for c in batch.completions])
            )
        # The sampler's own log-probs of the kept rows (None without them: the generate sampler).
        rollout_BT = rollout_logp_tensor([c.logprobs for c in batch.completions], seq.completion_ids_BT.shape[1])
        rollout_BT = None if rollout_BT is None else rollout_BT.to(self.device)
        train_metrics, old_logp_BT = self._update(seq, adv_B.to(self.device), rollout_BT)
        self.backend.update_weights()  # an engine with its own copy reloads them before it next generates
        t_end = time.time()
        # Every sampled group is stored, the ones dynamic sampling dropped too (advantage 0, kept=False, no training
        # log-probs) - collapsed groups are exactly what people look for in rollouts.
        adv_all_B = torch.zeros(len(sampled.batch))
        adv_all_B[sampled.keep_B] = adv_B.float()
        self._store_rollouts(sampled, adv_all_B, old_logp_BT)
        return self.dist.reduce_metrics(
            {
                **self.scorer.pop_metrics(),  # rewards' log_metric values, averaged over the step as in TRL
                **reward_metrics(
                    sampled.scores,
                    self.dist.gather(sampled.reward_B),
                    self.dist.gather(torch.tensor(sampled.batch.group_ids)),
                ),
                **train_metrics,
                **length_metrics(batch),
                "adv_abs_mean": adv_B.abs().mean().item(),
                "lr": self.scheduler.get_last_lr()[0],
                "tokens_per_s": Sum(sum(c.num_tokens for c in sampled.batch.completions) / max(t_end - t0, 1e-9)),
                **sampled.metrics,
                **self._mismatch_metrics(old_logp_BT, rollout_BT, seq.completion_mask_BT),
                **{k: Max(v) for k, v in self.backend.pop_metrics().items()},
                "time/train": Max(t_end - t_reward),  # a step takes as long as its slowest process
                "time/step": Max(t_end - t0),
            }
        )

    def _generate(self, n: int) -> RolloutBatch:
        first = self.sampler.position  # group ids = prompt draw counts: unique over the run, stable on resume
        prompts = self.sampler.take(n)
        group_ids = list(range(first, first + len(prompts)))
        # Every process drew the same global list; each keeps every N-th group (a group never spans processes).
        prompts, group_ids = self.dist.shard(prompts), self.dist.shard(group_ids)
        G = self.cfg.algorithm.num_generations
        if self.cfg.rollout.seeded_groups:
            return generate_seeded(
                self.backend, prompts, group_ids, num_generations=G, seed=self.cfg.training.seed, device=self.device
            )
        return self.backend.generate(prompts, group_ids, num_generations=G)

    def _store_rollouts(self, sampled: CollectedGroups, adv_all_B: torch.Tensor, old_logp_BT: torch.Tensor) -> None:
        """Every process's groups go to process 0, which writes the step's rollout file. ``old_logp_BT``: the kept
        rows' log-probs under the training forward (their means are the ``train_mean_logprob`` column)."""
        step = self.step + 1
        if not self.rollout_store.wants(step):
            return
        kept = sampled.keep_B.tolist()
        train_logp: list[float | None] = [None] * len(sampled.batch)
        for r, i in enumerate(sampled.keep_B.nonzero().flatten().tolist()):
            n = sampled.batch.completions[i].num_tokens
            train_logp[i] = old_logp_BT[r, :n].mean().item() if n else None
        parts = self.dist.gather_objects(
            (sampled.batch.completions, sampled.scores, adv_all_B.tolist(), kept, train_logp)
        )
        if self.dist.is_main:
            completions, scores, adv, kept, train_logp = zip(*parts, strict=True)
            flat = lambda xss: [x for xs in xss for x in xs]  # noqa: E731
            self.rollout_store.write(
                step,
                RolloutBatch(flat(completions)),
                RewardScores.concat(scores),
                torch.tensor(flat(adv)),
                extra={"kept": flat(kept), "train_mean_logprob": flat(train_logp)},
            )

    def _score(self, batch: RolloutBatch) -> tuple[RewardScores, torch.Tensor]:
        scores = self._score_rewards(batch)
        return scores, torch.tensor([math.nan if v is None else v for v in scores.total], dtype=torch.float32)

    def _score_rewards(self, batch: RolloutBatch) -> RewardScores:
        """Every reward on ``batch``, called as TRL calls them (chat messages for a conversational dataset, token
        ids, the trainer state)."""
        return self.scorer.score(
            batch.reward_prompts,
            batch.reward_completions,
            batch.columns(),
            completion_ids=batch.completion_ids,
            trainer_state=trainer_state(global_step=self.step, max_steps=self.cfg.training.max_steps),
        )

    @torch.no_grad()
    def _logprobs_nograd(self, model, seq: SequenceTensors, *, record: bool = False) -> torch.Tensor:
        """``logp_BT`` of the whole batch in micro-batches (halved on out-of-memory); ``record``: the old policy's
        forward, whose experts routing replay and flip rates compare against."""

        def chunk(rows: torch.Tensor) -> torch.Tensor:
            with self.forward(model, seq.select(rows), routing=record and self.moe.wants_routing) as out:
                self.moe.record(rows, out.routing)
            return out.logp_BT

        return self.logprob_chunks.run(chunk, seq.input_ids_BL.shape[0])

    def _mismatch_metrics(self, old_logp_BT, rollout_BT, mask_BT) -> dict[str, Any]:
        """``mismatch/*`` (``rl.correction``) of the step's kept rows: the sampler's log-probs against the training
        forward's before the update; none without sampler log-probs."""
        if rollout_BT is None:
            return {}
        _, m = rollout_correction(old_logp_BT, rollout_BT, mask_BT, **self.correction)
        return {k: Max(v.item()) if k == "mismatch/max_ratio" else v.item() for k, v in m.items()}

    def _update(
        self, seq: SequenceTensors, adv_B: torch.Tensor, rollout_BT: torch.Tensor | None = None
    ) -> tuple[dict[str, float], torch.Tensor]:
        """``num_iterations`` passes of mini-batch updates over the batch; returns the metrics (averaged over the
        updates) and the old policy's ``logp_BT`` (detached: what the rollout store keeps). ``rollout_BT``: the
        sampler's log-probs, which the rollout correction weighs the loss with (``algorithm.rollout_correction``)."""
        a = self.cfg.algorithm
        B = seq.input_ids_BL.shape[0]
        # Optimizer updates per pass, as the LR schedule plans them (rl.distributed.local_sizes). Dynamic sampling may
        # keep fewer rows than the batch: they are split into as many mini-batches all the same, so the schedule and
        # the on-policy shortcut below hold whatever the number of rows.
        n_mini = self.sizes.batch // self.sizes.mini
        # With a single on-policy update, pi_old == pi_theta: the first forward's detached logp *is* old_logp, which
        # saves a forward (the ratio is exactly 1, the gradient is the policy gradient). Otherwise compute it once.
        on_policy = a.num_iterations == 1 and n_mini == 1 and not self.moe.needs_old_forward
        # One mode for every training-side forward (old policy, reference, gradient): train mode, as TRL scores old
        # log-probs. Generation leaves the model as it found it, and the model loads in eval mode: without this
        # the first step's old log-probs ran without LoRA dropout or router jitter and every later step's with it.
        self.policy.model.train()
        self.moe.begin_step(seq.attention_mask_BL)
        old_logp_BT = None if on_policy else self._logprobs_nograd(self.policy.model, seq, record=True)
        ref_logp_BT = None
        if self.kl_fn is not None:
            with self.policy.as_reference() as ref:
                ref_logp_BT = self._logprobs_nograd(ref, seq)
        gen = torch.Generator().manual_seed(self.cfg.training.seed * 100_003 + self.step)
        sums: dict[str, float] = defaultdict(float)
        seen_BT = torch.zeros_like(seq.completion_mask_BT, dtype=torch.float32) if on_policy else old_logp_BT
        n_updates = 0
        for _ in range(a.num_iterations):
            for mb in torch.randperm(B, generator=gen).tensor_split(n_mini):
                if len(mb) == 0:  # fewer kept rows than mini-batches: no update, but the schedule moves on as planned
                    self.scheduler.step()
                    continue
                self._mini_batch_update(seq, mb, adv_B, old_logp_BT, ref_logp_BT, sums, seen_BT, rollout_BT)
                n_updates += 1
        metrics = {k: v / max(n_updates, 1) for k, v in sums.items()}
        return {**metrics, **self.moe.end_step()}, seen_BT.detach()

    def _mini_batch_update(self, seq, mb, adv_B, old_logp_BT, ref_logp_BT, sums, seen_BT, rollout_BT=None) -> None:
        """One optimizer update on the rows ``mb``, accumulated over micro-batches. Each micro-batch's loss is
        weighted by its share of the mini-batch's normaliser (tokens or rows, as the loss declares), counted over
        every process (``rl.distributed``), so the update equals the one-process full-batch one."""
        a, t = self.cfg.algorithm, self.cfg.training
        mask_BT = seq.completion_mask_BT
        self.optimizer.zero_grad(set_to_none=True)
        tokens = self.loss_fn.normaliser == "tokens"  # as the loss declares (rl.losses.PolicyLoss)
        unit = self.dist.token_unit(mask_BT[mb].sum()).clamp(min=1) if tokens else torch.tensor(len(mb))
        chunks = mb.split(self.sizes.micro)
        for j, rows in enumerate(chunks):
            sub = seq.select(rows)
            replay = self.moe.replay_for(rows)
            with (
                self.dist.no_sync(self.train_model, last=j == len(chunks) - 1),
                self.forward(
                    self.train_model, sub, routing=self.moe.wants_routing, replay_BLK=replay, entropy=True
                ) as out,
            ):
                logp_BT = out.logp_BT
                old = logp_BT.detach() if old_logp_BT is None else old_logp_BT[rows]
                kl_BT = self.kl_fn(logp_BT, ref_logp_BT[rows]) if self.kl_fn else None
                weight = {}
                if self.correction["mode"] != "none" and rollout_BT is not None:  # pi_train / pi_rollout, bounded
                    w_BT, _ = rollout_correction(old, rollout_BT[rows], sub.completion_mask_BT, **self.correction)
                    weight = {"rollout_weight_BT": w_BT}
                loss, m = self.loss_fn(
                    logp_BT,
                    old,
                    adv_B[rows],
                    sub.completion_mask_BT,
                    kl_BT=kl_BT,
                    beta=a.beta,
                    max_len=self.cfg.rollout.max_new_tokens,
                    **self.loss_kwargs,
                    **weight,
                )
                self.moe.observe(rows, out.routing)
                m["entropy"] = (out.entropy_BT.sum() / sub.completion_mask_BT.sum().clamp(min=1)).detach()
                loss, m = self.moe.add_aux_loss(loss, m, out.routing)
                share = (sub.completion_mask_BT.sum() if tokens else len(rows)) / unit
                self.dist.accelerator.backward(loss * share)  # inside: re-run routers replay the same experts
            sums["loss"] += loss.item() * float(share)
            for k, v in m.items():
                sums[k] += v.item() * float(share)
            if old_logp_BT is None:
                seen_BT[rows] = logp_BT.detach().float()
        max_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
        norm = self.dist.clip_grad_norm(self.params, max_norm)  # None: DeepSpeed clips itself
        sums["grad_norm"] += math.nan if norm is None else float(norm)
        self.optimizer.step()
        self.scheduler.step()

    # ---------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the held-out prompts, scored by every reward; ``accuracy`` is the first reward's
        mean (abstentions count as wrong). Each process scores its share of the prompts; the sums are added up."""
        if not self.data.eval:
            return {"accuracy": float("nan")}
        # Sharded weights: every process generates as many rows as the others (the padding is not scored).
        prompts, n_real = self.dist.pad_to_equal(self.dist.shard(self.data.eval), filler=self.data.eval[0])
        labels = [spec.label for spec in self.cfg.rewards.rules]
        sums = dict.fromkeys(["_n", "completion_len", *labels], 0.0)
        if prompts:
            batch = self.backend.generate(prompts, list(range(len(prompts))), num_generations=1, greedy=True)
            batch = RolloutBatch(batch.completions[:n_real])
            scores = self._score_rewards(batch)
            sums.update({c.label: sum(v or 0.0 for v in c.values) for c in scores.rewards})
            sums["_n"], sums["completion_len"] = len(batch), sum(c.num_tokens for c in batch.completions)
        sums = self.dist.sum(sums)
        out = {"accuracy" if i == 0 else label: sums[label] / sums["_n"] for i, label in enumerate(labels)}
        out["completion_len"] = sums["completion_len"] / sums["_n"]
        return {**self.scorer.pop_metrics(), **out}  # rewards' log_metric values (this process's) from the eval

    @staticmethod
    def _fmt_eval(ev: dict[str, float]) -> str:
        return ", ".join(f"{k}={v:.3f}" for k, v in ev.items())

    # ---------------------------------------------------------- checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "data_position": self.sampler.position,
            "base_eval": self.base_eval,
            "elapsed": time.time() - self.started,
        }

    def save_checkpoint(self) -> Path:
        save_sharded, _ = self.dist.sharded_checkpoint(self.train_model, self.optimizer)
        return save_checkpoint(
            self.run_dir / "checkpoints",
            self.step,
            self.policy.model,
            self.optimizer,
            self.scheduler,
            self._trainer_state(),
            keep=self.cfg.logging.keep_checkpoints,
            rank=self.dist.rank,
            barrier=self.dist.barrier,
            full_state=None if save_sharded else self.dist.full_state_dict(self.train_model),
            optimizer_per_rank=self.dist.sharded,
            save_sharded=save_sharded,
        )

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir / "checkpoints")
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s; starting from scratch", self.run_dir)
            if self.dist.is_main:  # the restart rewrites every step: keep no row of the attempt before it
                self.metrics_log.truncate_after(0)
                self.rollout_store.truncate_after(0)
            return
        _, load_sharded = self.dist.sharded_checkpoint(self.train_model, self.optimizer)
        state = load_checkpoint(
            ckpt, self.policy.model, self.optimizer, self.scheduler, rank=self.dist.rank, load_sharded=load_sharded
        )
        self.step = state["step"]
        self.sampler.position = state["data_position"]
        self.base_eval = state["base_eval"]
        self.started = time.time() - state.get("elapsed", 0.0)
        if self.dist.is_main:
            self.metrics_log.truncate_after(self.step)
            self.rollout_store.truncate_after(self.step)
            console.print(f"resumed from {ckpt} (step {self.step})")


def run_dir_for(cfg: RecipeConfig, recipe_path: str | Path | None, output_dir: str | None) -> Path:
    if output_dir:
        return Path(output_dir)
    if cfg.logging.output_dir:
        return Path(cfg.logging.output_dir)
    return Path("runs") / (Path(recipe_path).stem if recipe_path else "default")
