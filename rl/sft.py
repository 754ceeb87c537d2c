"""``r1kit sft``: supervised fine-tuning on (prompt, completion) rows, on TRL's ``SFTTrainer``.

The cold start, SFT on rejection samples and distillation of the R1 pipeline. TRL does the loss and the loop:
prompt-completion rows, ``completion_only_loss`` (the prompt's labels are -100: the loss is the mean NLL of the
completion tokens, the EOS that TRL appends to every completion included), LoRA or full fine-tuning as
``model.finetune`` loads it. r1kit adds what ``r1kit train`` has: the run directory (``config.yaml``,
``metrics.jsonl``, ``checkpoints/checkpoint-N``, ``final/``, ``summary.json``), ``--resume`` after a kill, and the
held-out greedy accuracy before and after, scored by the recipe's rewards as ``GRPOTrainer.evaluate`` scores it.

Where it differs from TRL's defaults (``SFTConfig`` turns on gradient checkpointing and bf16, and has its own LR):
every optimizer setting comes from the recipe's ``training`` section, and the LR schedule is r1kit's
(``rl.schedules.make_scheduler``: warmup ``(u + 1) / warmup``, as in ``r1kit train``), not transformers'.

A checkpoint is complete when its ``trainer_state.json`` parses: HF writes it after the weights, optimizer,
scheduler and RNG states. r1kit's own state (the base model's held-out scores, the elapsed time) travels inside that
file, as a stateful callback's attributes, so no checkpoint is ever complete without it. On ``--resume`` incomplete
checkpoints are deleted, training continues from the latest complete one (HF restores the data order and RNG), and
``metrics.jsonl`` loses the rows after its step.

Under ``accelerate launch`` HF's Trainer runs DDP: ``sft.batch_size`` is the global batch (split over processes,
then accumulated over ``training.micro_batch_size`` rows), every process scores the whole held-out set (the same
greedy numbers, computed once per process) and only process 0 writes files.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import shutil
import string
import time
from pathlib import Path
from typing import Any

import torch

from core.configio import ConfigError
from core.files import atomic_write_text
from rl.config import RecipeConfig, SFTConfig, dump_recipe
from rl.reporting.progress import console, summary_table
from rl.runlog import MetricsLog

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOGGED = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "entropy": "entropy"}
"""TRL/HF log keys written to ``metrics.jsonl`` (as the names ``r1kit train`` uses), besides the step and epoch.
Left out: TRL's ``num_tokens``, a counter that restarts at 0 on resume."""


# ------------------------------------------------------------------------------------------------------ rows


def load_rows(cfg: RecipeConfig, tokenizer=None) -> list[dict[str, str]]:
    """The training rows as TRL's prompt-completion records ``{"prompt", "completion"}`` (completions without EOS:
    TRL appends it). ``tokenizer`` is needed only by the ``chat`` template."""
    from rollouts.adapters import prompt_formatter

    s = cfg.sft
    s.check_source()
    fmt = prompt_formatter(cfg.data.template, tokenizer)
    if s.task is not None:
        return task_rows(s, fmt, num_eval=cfg.data.num_eval, seed=cfg.data.seed)
    return dataset_rows(s, fmt)


def task_rows(s: SFTConfig, fmt, *, num_eval: int, seed: int) -> list[dict[str, str]]:
    """Synthetic traces from the task's training split: the held-out prompts of ``data.seed`` / ``data.num_eval``
    are never among them. A ``mistake_rate`` share shows the task's systematic mistake (``rollouts.tasks.DEMOS``)."""
    from rollouts.tasks import DEMOS, split_examples

    train, _ = split_examples(s.task, n_train=s.num_rows or 256, n_eval=num_eval, seed=seed)
    demo, rng = DEMOS.get(s.task), random.Random(seed)
    rows = []
    for ex in train:
        shown = demo(ex, rng, s.mistake_rate).shown_answer
        rows.append({"prompt": fmt(ex.question), "completion": ex.completion(shown)})
    return rows


def template_fields(template: str) -> list[str]:
    """The columns a ``completion_template`` reads.

    >>> template_fields("<think>{trace}</think><answer>{attempt}</answer> {{literal}}")
    ['trace', 'attempt']
    """
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    return [f.split(".")[0].split("[")[0] for f in fields]


def dataset_rows(s: SFTConfig, fmt) -> list[dict[str, str]]:
    """Rows of ``sft.dataset`` in file order (at most ``sft.num_rows``): the prompt from ``prompt_column`` verbatim
    or ``question_column`` through ``data.template``; the completion from ``completion_column`` or
    ``completion_template``. Rows with a null prompt or completion column are skipped (and counted in the log)."""
    from rollouts.data import DataError, open_dataset

    try:
        ds = open_dataset(s.dataset, subset=s.subset, split=s.split)
    except DataError as e:
        raise DataError(str(e).replace("data.path:", "sft.dataset:", 1)) from e
    columns = list(ds.column_names)
    needed = [("question_column", s.question_column) if s.question_column else ("prompt_column", s.prompt_column)]
    if s.completion_template is None:
        needed.append(("completion_column", s.completion_column))
    else:
        needed += [("completion_template", f) for f in template_fields(s.completion_template)]
    for key, column in needed:
        if column not in columns:
            raise ConfigError(
                f"sft.{key}: {s.dataset!r} has no column {column!r} (it has {sorted(columns)}); set sft.{key} to one "
                "of them"
            )
    if s.num_rows is not None and len(ds) > s.num_rows:
        ds = ds.select(range(s.num_rows))
    rows, skipped = [], 0
    for row in ds:
        question = row[needed[0][1]]
        values = [row[f] for _, f in needed[1:]]
        if question is None or any(v is None for v in values):
            skipped += 1
            continue
        prompt = fmt(str(question)) if s.question_column else str(question)
        completion = s.completion_template.format(**row) if s.completion_template else str(values[0])
        rows.append({"prompt": prompt, "completion": completion})
    if skipped:
        log.warning("sft.dataset: skipped %d of %d rows with a null prompt or completion column", skipped, len(ds))
    if not rows:
        raise ConfigError(
            f"sft.dataset: {s.dataset!r} gave no rows to train on ({len(ds)} rows, {skipped} with null columns); "
            "point sft.dataset at prompt/completion rows"
        )
    return rows


# ------------------------------------------------------------------------------------------------- training


def optimizer_steps(cfg: RecipeConfig, rows: int) -> int:
    """``training.max_steps``, or ``ceil(sft.epochs * rows / sft.batch_size)`` when ``sft.epochs`` is set.

    >>> from rl.config import load_recipe
    >>> optimizer_steps(load_recipe(None, ["sft.epochs=2", "sft.batch_size=16"]), rows=100)  # ceil(2 * 100 / 16)
    13
    """
    s = cfg.sft
    return cfg.training.max_steps if s.epochs is None else math.ceil(s.epochs * rows / s.batch_size)


def batch_split(cfg: RecipeConfig, world_size: int) -> tuple[int, int]:
    """(rows per forward per process, gradient accumulation steps) that make one ``sft.batch_size`` step.

    >>> from rl.config import load_recipe
    >>> batch_split(load_recipe(None, ["sft.batch_size=16", "training.micro_batch_size=4"]), world_size=2)
    (4, 2)
    """
    batch, micro = cfg.sft.batch_size, cfg.training.micro_batch_size
    if batch % world_size:
        raise ConfigError(f"sft.batch_size: {batch} rows do not split over {world_size} processes; use a multiple")
    micro = micro or batch // world_size
    if (batch // world_size) % micro:
        raise ConfigError(
            f"training.micro_batch_size: {micro} does not divide sft.batch_size={batch} per process "
            f"({batch // world_size} rows); pick a divisor"
        )
    return micro, batch // world_size // micro


HF_OPTIMIZERS = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit"}


def sft_config(cfg: RecipeConfig, run_dir: Path, *, max_steps: int, world_size: int):
    """TRL's ``SFTConfig`` for the recipe: every setting that differs from TRL's defaults is listed here."""
    from trl import SFTConfig as TRLSFTConfig

    t, lg = cfg.training, cfg.logging
    micro, accumulate = batch_split(cfg, world_size)
    cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
    return TRLSFTConfig(
        output_dir=str(run_dir / CHECKPOINTS),
        max_steps=max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulate,
        learning_rate=t.lr,
        warmup_steps=t.warmup_steps,  # the schedule itself is r1kit's (R1kitSFTTrainer)
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_betas[0],
        adam_beta2=t.adam_betas[1],
        max_grad_norm=t.max_grad_norm,
        optim=HF_OPTIMIZERS[t.optimizer],
        seed=t.seed,
        use_cpu=cpu,
        bf16=t.mixed_precision == "bf16",  # TRL's default is bf16 on
        fp16=t.mixed_precision == "fp16",
        activation_checkpointing=cfg.model.gradient_checkpointing,  # TRL's default is on (gradient_checkpointing)
        max_length=cfg.sft.max_length,
        completion_only_loss=True,
        packing=False,
        router_aux_loss_coef=cfg.moe.router_aux_loss_coef,  # TRL's default is the model config's own coefficient
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=lg.save_every or max(max_steps, 1),  # 0: only at the end (HF saves the last step anyway)
        save_total_limit=lg.keep_checkpoints,
        report_to="none",
        disable_tqdm=not lg.progress,
        dataloader_num_workers=0,
        restore_callback_states_from_checkpoint=False,  # r1kit reads its state itself (SFTRunner._resume)
    )


@functools.cache
def _trainer_class():
    """``SFTTrainer`` with r1kit's LR schedule (``training.lr_schedule``), the one ``r1kit train`` uses, and a resume
    that restores MoE expert weights (``_load_from_checkpoint``). Built on first use: importing TRL takes seconds."""
    from peft import PeftModel
    from trl import SFTTrainer

    from rl.modeling import load_pretrained
    from rl.schedules import make_scheduler

    class R1kitSFTTrainer(SFTTrainer):
        def __init__(self, *args, lr_schedule: str, model_cfg, **kwargs) -> None:
            self.lr_schedule, self.model_cfg = lr_schedule, model_cfg
            super().__init__(*args, **kwargs)

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = make_scheduler(
                    optimizer or self.optimizer,
                    schedule=self.lr_schedule,
                    warmup_steps=self.args.warmup_steps,
                    total_updates=num_training_steps,
                )
            return self.lr_scheduler

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            # Measured (transformers 5.24, tiny deepseek_v3, full fine-tuning): HF saves a checkpoint through
            # save_pretrained, which writes fused MoE experts in the per-expert hub layout, then reads it back with
            # a plain load_state_dict(strict=False): the experts' keys miss, only a warning says so, and the
            # resumed run trains on from the step-0 experts. from_pretrained converts the layout back; strict=True
            # makes any other mismatch an error.
            model = self.model if model is None else model
            if isinstance(model, PeftModel):  # adapters only: peft's own loading is right
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            loaded = load_pretrained(resume_from_checkpoint, self.model_cfg, key="--resume")
            model.load_state_dict(loaded.state_dict(), strict=True)

    return R1kitSFTTrainer


def _bar_without_dicts():
    """HF's progress bar, without the log dict it prints under the bar at every step."""
    from transformers.trainer_callback import ProgressCallback

    class Bar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    return Bar()


def _run_callback(runner: SFTRunner):
    """The TrainerCallback that writes ``metrics.jsonl``, runs ``sft.eval_every`` evaluations and puts r1kit's
    state into each checkpoint's ``trainer_state.json`` (``ExportableState``)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class R1kitSFTCallback(TrainerCallback, ExportableState):
        def __init__(self) -> None:
            self.pending_eval: dict[str, float] = {}

        def state(self) -> dict[str, Any]:
            return {"args": {}, "attributes": runner.checkpoint_state()}

        def on_step_end(self, args, state, control, **kwargs):
            every = runner.cfg.sft.eval_every
            if every and state.global_step % every == 0:  # before HF logs this step (on_log): one row per step
                self.pending_eval = {f"eval/{k}": v for k, v in runner.evaluate(state.global_step).items()}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:  # skip the end-of-run totals
                return
            row = {"step": state.global_step, **{ours: logs[hf] for hf, ours in LOGGED.items() if hf in logs}}
            row["epoch"] = state.epoch
            runner.metrics_log.append({**row, **self.pending_eval})
            self.pending_eval = {}

    return R1kitSFTCallback()


class SFTRunner:
    """One ``r1kit sft`` run in ``run_dir``; ``train()`` returns the summary. Several runs may share a process."""

    def __init__(self, cfg: RecipeConfig, run_dir: str | Path, *, resume: bool = False) -> None:
        from accelerate.state import AcceleratorState, GradientState

        from rewards.scoring import RewardScorer, bind_rewards
        from rl.modeling import load_policy, load_tokenizer, resolve_source
        from rl.trainer import seed_everything
        from rollouts.data import load_prompt_sets

        cfg.sft.check_source()
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.run_dir.mkdir(parents=True, exist_ok=True)
        t = cfg.training
        seed_everything(t.seed)
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        # Rows, held-out prompts and reward binding first: a missing column fails in seconds, not after a download.
        chat = cfg.data.template == "chat"
        tokenizer = load_tokenizer(resolve_source(cfg.model, cfg.data), cfg.model) if chat else None
        self.rows = load_rows(cfg, tokenizer)
        sets = load_prompt_sets(**cfg.data.prompt_set_args(), tokenizer=tokenizer)
        self.eval_prompts = sets.eval
        self.scorer = RewardScorer(
            bind_rewards(cfg.rewards.rules, sets.columns), max_error_fraction=cfg.rewards.max_error_fraction
        )
        self.max_steps = optimizer_steps(cfg, len(self.rows))
        # accelerate's process-wide state: another run in this process (GRPO, another SFT) may have set other values.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        args = sft_config(cfg, self.run_dir, max_steps=self.max_steps, world_size=world_size)
        self.policy = load_policy(cfg.model, cfg.data, need_reference=False, device=args.device)
        self.backend = self._make_backend()
        self.metrics_log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.base_eval: dict[str, float] | None = None
        self.started = time.time()
        self.trainer = self._make_trainer(args)

    def _make_backend(self):
        from rl.evaluation import make_backend

        r = self.cfg.rollout
        return make_backend(self.policy, self.cfg, temperature=r.temperature, max_new_tokens=r.max_new_tokens)

    def _make_trainer(self, args):
        import datasets
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        bars = datasets.is_progress_bar_enabled()
        if not self.cfg.logging.progress:
            datasets.disable_progress_bars()  # TRL's tokenizing passes each draw a bar
        try:
            trainer = _trainer_class()(
                model=self.policy.model,
                args=args,
                train_dataset=datasets.Dataset.from_list(self.rows),
                processing_class=self.policy.tokenizer,
                callbacks=[_run_callback(self)],
                lr_schedule=self.cfg.training.lr_schedule,
                model_cfg=self.cfg.model,
            )
        finally:
            if bars:
                datasets.enable_progress_bars()
        dropped = len(self.rows) - len(trainer.train_dataset)
        if not len(trainer.train_dataset):
            raise ConfigError(
                f"sft.max_length: {self.cfg.sft.max_length} tokens leave none of the {len(self.rows)} rows a "
                "completion token (their prompts are that long); raise sft.max_length"
            )
        if dropped:  # TRL drops rows whose completion sft.max_length cut off entirely
            log.warning(
                "sft.max_length: %d of %d rows have no completion token left; TRL dropped them",
                dropped,
                len(self.rows),
            )
        # HF prints every step's log dict (beside its bar, or alone without one): metrics.jsonl has them.
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        if self.cfg.logging.progress:
            trainer.add_callback(_bar_without_dicts())
        return trainer

    # ----------------------------------------------------------------------------------------------------- run
    def train(self) -> dict[str, Any]:
        main = self.trainer.is_world_process_zero()
        if main:
            atomic_write_text(self.run_dir / "config.yaml", dump_recipe(self.cfg))
        ckpt = self._resume() if self.resume else None
        if self.base_eval is None:
            self.base_eval = self.evaluate(0)
            if main:
                console.print(f"base model, held-out greedy: {_fmt_eval(self.base_eval)}")
        if self.max_steps > 0:  # HF reads max_steps=0 as "use num_train_epochs"
            self.trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        import trl

        from rl.modeling import save_final

        final_eval = self.evaluate(self.max_steps)
        state = self.trainer.state
        summary = {
            "kind": "sft",
            "base_accuracy": self.base_eval["accuracy"],
            "final_accuracy": final_eval["accuracy"],
            **{f"base_{k}": v for k, v in self.base_eval.items() if k != "accuracy"},
            **{f"final_{k}": v for k, v in final_eval.items() if k != "accuracy"},
            "steps": state.global_step,
            "rows": len(self.trainer.train_dataset),  # after TRL's drop of rows that truncation left without labels
            "epochs": state.epoch or 0.0,  # rows seen / rows, as HF counts it
            "wall_seconds": time.time() - self.started,
            "world_size": self.trainer.args.world_size,
            "eval_prompts": len(self.eval_prompts),
            "eval_reward": self.cfg.rewards.rules[0].label,
            "model": self.cfg.model.name_or_path,
            "finetune": self.cfg.model.finetune,
            "trainer": f"trl.SFTTrainer {trl.__version__}",
        }
        if self.trainer.is_world_process_zero():
            save_final(self.policy, self.run_dir / "final")
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            console.print(summary_table(summary))
        return summary

    # ---------------------------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy completions of the held-out prompts scored by every reward: ``accuracy`` is the first reward's
        mean (abstentions count as wrong), then each other reward's mean and ``completion_len`` (tokens), as
        ``GRPOTrainer.evaluate`` gives them."""
        from rewards.scoring import trainer_state
        from rl.evaluation import mean_abstain_as_zero

        if not self.eval_prompts:
            return {"accuracy": math.nan}
        prompts = self.eval_prompts
        self.backend.update_weights()  # SFT trained the module since the last evaluation (vLLM: reload it)
        batch = self.backend.generate(prompts, list(range(len(prompts))), num_generations=1, greedy=True)
        scores = self.scorer.score(
            batch.reward_prompts,
            batch.reward_completions,
            batch.columns(),
            completion_ids=batch.completion_ids,
            trainer_state=trainer_state(global_step=step, max_steps=self.max_steps),
        )
        labels = [spec.label for spec in self.cfg.rewards.rules]
        out = {"accuracy" if i == 0 else k: mean_abstain_as_zero(scores[k].values) for i, k in enumerate(labels)}
        out["completion_len"] = sum(c.num_tokens for c in batch.completions) / len(batch.completions)
        return {**self.scorer.pop_metrics(), **out}

    # ------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides HF's state (inside its ``trainer_state.json``)."""
        return {"base_eval": self.base_eval, "elapsed": time.time() - self.started}

    def _resume(self) -> Path | None:
        """The latest complete checkpoint (incomplete ones deleted), with r1kit's state restored from it."""
        main = self.trainer.is_world_process_zero()
        found = complete_checkpoints(self.run_dir / CHECKPOINTS, delete_incomplete=main)
        if not found:
            log.warning("--resume: no complete checkpoint in %s; starting from scratch", self.run_dir)
            self.metrics_log.truncate_after(0)  # the restart rewrites every step
            return None
        step, ckpt, state = found[-1]
        mine = state.get("stateful_callbacks", {}).get("R1kitSFTCallback", {}).get("attributes", {})
        self.base_eval = mine.get("base_eval")
        self.started = time.time() - mine.get("elapsed", 0.0)
        if main:
            self.metrics_log.truncate_after(step)
            console.print(f"resumed from {ckpt} (step {step})")
        return ckpt


def complete_checkpoints(root: Path, *, delete_incomplete: bool) -> list[tuple[int, Path, dict[str, Any]]]:
    """``(step, dir, trainer_state)`` of every complete ``checkpoint-N`` under ``root``, oldest first. A checkpoint
    is complete when its ``trainer_state.json`` (HF's last write) parses; the others (a kill mid-save) are deleted
    when ``delete_incomplete``."""
    out = []
    for d in root.glob("checkpoint-*") if root.is_dir() else []:
        suffix = d.name.removeprefix("checkpoint-")
        if not d.is_dir() or not suffix.isdigit():
            continue
        try:
            state = json.loads((d / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("--resume: %s is incomplete (no readable trainer_state.json); deleting it", d)
            if delete_incomplete:
                shutil.rmtree(d)
            continue
        out.append((int(suffix), d, state))
    return sorted(out, key=lambda x: x[0])


def _fmt_eval(ev: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in ev.items())
