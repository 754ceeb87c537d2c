"""Recipe configuration: one small frozen dataclass per concern. A recipe YAML maps onto ``RecipeConfig``.

Every field has a docstring (the recipe reference in README.md summarises them; ``r1kit config RECIPE`` prints a
recipe with every default filled in); values are validated in ``__post_init__`` with a message naming the key and
the fix. Unknown keys are found first, anywhere in the recipe, before any value is converted (``check_keys``).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.configio import ConfigError, apply_overrides, check_keys, from_dict, read_yaml_mapping, to_dict
from rewards.scoring import RewardSpec
from rl.config_commands import SampleConfig, SFTConfig
from rl.config_engine import RolloutCorrectionConfig, VLLMConfig, check_engine

log = logging.getLogger(__name__)


def looks_like_a_path(ref: str) -> bool:
    """Whether a model reference is written as a local path rather than a hub id (``name`` or ``org/name``).

    >>> [looks_like_a_path(r) for r in ["./ckpt", "/models/x", "~/m", "runs/a/final", "Qwen/Qwen3-30B-A3B", "gpt2"]]
    [True, True, True, True, False, False]
    """
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PretrainConfig:
    """How the tiny base is "pre-trained": supervised steps on demonstrations with systematic mistakes."""

    steps: int = 700
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    mistake_rate: float = 0.6
    """Share of demonstrations whose shown answer carries the task's systematic mistake (``rollouts.tasks.DEMOS``:
    arith forgets the last term, pyfunc's code is off by one)."""
    n_demos: int = 40000
    template: str = "qa"
    seed: int = 0
    style: Literal["r1", "plain"] = "r1"
    """How demonstrations are written: ``r1``, in the R1 format (``<think>..</think><answer>..</answer>``), or
    ``plain``, the same worked steps without tags (``3+5=8 8+7=15 so the answer is 15``): a base that has never seen
    the template, as the R1 pipeline's cold start assumes (``recipes/r1_tiny_pipeline.yaml``)."""


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "tiny://deepseek_v3/arith"
    """Hub id, local path, or ``tiny://<family>/<task>`` (a tiny MoE built and cached locally)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when loading by hub id."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights dtype. bf16 on GPUs; float32 on CPU. With bf16 / fp16 weights the optimizer steps float32 master
    copies and writes them back rounded (``rl.optim.MasterWeights``: +4 bytes per trainable parameter), so updates
    below the bf16 spacing (2^-8 to 2^-7 relative) still add up; LoRA adapters are float32 already (peft)."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the hub (needed by some older MoE checkpoints)."""
    attn_implementation: str | None = None
    """e.g. ``sdpa``, ``flash_attention_2``; None lets transformers choose."""
    finetune: Literal["lora", "full"] = "lora"
    """LoRA adapters (peft) or full fine-tuning. With LoRA the reference model is the base, adapters disabled."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input; 0 keeps old/new log-probs comparable."""
    lora_target_modules: list[str] | None = None
    """Module names to adapt; None = attention projections and dense MLPs (found by name in the model)."""
    lora_target_experts: bool = False
    """Also adapt the routed experts' weights (peft ``target_parameters`` on the fused expert tensors)."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory in the training forward."""
    tiny: PretrainConfig = field(default_factory=PretrainConfig)
    """How a ``tiny://`` base is pre-trained on first use (ignored for real models)."""

    def __post_init__(self) -> None:
        _check(bool(self.name_or_path), "model.name_or_path: must name a hub id, a local path or tiny://family/task")
        _check(self.lora_r > 0, f"model.lora_r: must be > 0, got {self.lora_r}")
        _check(0 <= self.lora_dropout < 1, f"model.lora_dropout: must be in [0, 1), got {self.lora_dropout}")


@dataclass(frozen=True)
class DataConfig:
    task: str | None = "arith"
    """Synthetic task generated locally (``arith``, ``pyfunc``: see ``rollouts.tasks``); null when ``path`` is used."""
    path: str | None = None
    """A hub dataset id, or a local file (JSONL/JSON/Parquet/CSV) or directory; a local path wins when it exists."""
    subset: str | None = None
    """Hub dataset configuration name (e.g. ``main`` for ``openai/gsm8k``); None = the dataset's default."""
    split: str = "train"
    """Dataset split when ``path`` is a hub id or a directory."""
    adapter: str = "generic"
    """How a row in the dataset's own schema becomes a prompt + reward columns: ``gsm8k``, ``math``, ``numina``
    or ``generic`` (``prompt_column`` is the question, every other column is passed on). See rollouts/adapters.py."""
    prompt_column: str = "prompt"
    """Column holding the question with the ``generic`` adapter (formatted with ``template``)."""
    filter: dict[str, list[Any]] = field(default_factory=dict)
    """Keep only rows whose column holds one of the listed values, e.g. ``{level: [Level 3, Level 4, Level 5]}``."""
    template: str = "qa"
    """Prompt template: ``qa`` (short, for tiny models), ``r1`` (DeepSeek-R1-Zero's plain text), ``chat`` (the
    tokenizer's chat template with the R1 system prompt; for instruct models) or ``none`` (the prompt column as
    written, e.g. ``r1kit sample``'s ``rl_prompts.jsonl``)."""
    num_train: int = 4000
    """Training prompts to draw (synthetic) or keep at most (files)."""
    num_eval: int = 256
    """Held-out prompts, never used in training, scored greedily before and after training."""
    seed: int = 1234
    """Seed of the synthetic train/eval split."""

    def __post_init__(self) -> None:
        from rollouts.adapters import ADAPTERS, PROMPT_TEMPLATES

        _check(self.task is not None or self.path is not None, "data: set data.task (synthetic) or data.path")
        _check(
            self.task is None or self.path is None,
            f"data: both data.task={self.task!r} and data.path={self.path!r} are set; to train on the file, set "
            "data.task: null (or pass --set data.task=null)",
        )
        _check(self.adapter in ADAPTERS, f"data.adapter: unknown {self.adapter!r}; known: {ADAPTERS.names()}")
        _check(
            self.template in PROMPT_TEMPLATES, f"data.template: unknown {self.template!r}; known: {PROMPT_TEMPLATES}"
        )
        _check(
            self.task is None or (self.adapter == "generic" and not self.filter),
            "data.adapter / data.filter: apply to data.path datasets; a synthetic data.task takes neither",
        )
        _check(self.num_train > 0, f"data.num_train: must be > 0, got {self.num_train}")
        _check(self.num_eval >= 0, f"data.num_eval: must be >= 0, got {self.num_eval}")

    def prompt_set_args(self) -> dict[str, Any]:
        """The keyword arguments of ``rollouts.data.load_prompt_sets`` this section gives (all but ``tokenizer``),
        so the trainer and ``r1kit eval`` read a recipe's prompts the same way."""
        return {
            "task": self.task,
            "path": self.path,
            "split": self.split,
            "prompt_column": self.prompt_column,
            "template": self.template,
            "num_train": self.num_train,
            "num_eval": self.num_eval,
            "seed": self.seed,
            "subset": self.subset,
            "adapter": self.adapter,
            "filters": self.filter,
        }


@dataclass(frozen=True)
class RolloutConfig:
    backend: str = "transformers"
    """Generation engine (``rollouts.backends.BACKENDS``): ``transformers`` (r1kit's sampler over the training
    module) or ``vllm`` (vLLM's engine in this process, weights synced after every step; ``rollout.vllm``)."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """The vLLM engine's settings (``rl.config_engine.VLLMConfig``); read only with ``backend: vllm``."""
    max_new_tokens: int = 64
    """Completion length cap; longer completions are cut and marked ``finish_reason=length``."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts (evaluation is greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it."""
    top_k: int = 0
    """Top-k sampling; 0 disables it."""
    stop: list[str] = field(default_factory=list)
    """Stop strings, e.g. ``["</answer>"]``: a completion ends at the token whose decoded text first contains one
    (that token kept, as transformers' ``stop_strings`` and vLLM's ``include_stop_str_in_output``), marked
    ``finish_reason=stop``; rollouts and evaluation alike. EOS still ends a completion; [] stops at EOS only."""
    generation_batch_size: int | None = None
    """Rows per ``generate`` call (memory bound); None generates the whole step at once."""
    sampler: str = "r1kit"
    """Decoding loop (``rollouts.backends.SAMPLERS``): ``r1kit`` (each prompt prefilled once per group, finished rows
    dropped) or ``generate``, transformers' ``model.generate`` (the reference; same tokens under the same seed,
    slower on small models)."""
    fused_decode: bool = True
    """r1kit's sampler decodes with a fused step (``rollouts.fused``: preallocated KV cache, no per-call model
    machinery; same logits) for the families it covers (Qwen3-MoE, DeepSeek-V3 on CPU); others, and False, call
    the model's forward every step."""
    torch_threads: int | None = None
    """CPU threads for torch while sampling; None: the same as training. Decoding a small model is a chain of
    tiny operators where extra threads mostly wait at barriers, so 1 is often fastest there even when training
    gains from more."""
    seeded_groups: bool = False
    """Generate each group alone with torch's RNG seeded from (training.seed, group id): completions then depend
    neither on the number of processes nor on which groups share a ``generate`` call, so a 2-process run
    reproduces the 1-process run. Costs throughput (G rows per call); for checks, not for speed."""

    def __post_init__(self) -> None:
        _check(self.max_new_tokens > 0, f"rollout.max_new_tokens: must be > 0, got {self.max_new_tokens}")
        _check(self.temperature > 0, f"rollout.temperature: must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"rollout.top_p: must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, f"rollout.top_k: must be >= 0, got {self.top_k}")
        _check(
            all(isinstance(s, str) and s for s in self.stop),
            f"rollout.stop: every stop string must be a non-empty string, got {self.stop!r}",
        )
        _check(
            self.torch_threads is None or self.torch_threads > 0,
            f"rollout.torch_threads: must be > 0 or null, got {self.torch_threads}",
        )

    def backend_options(self, *, temperature: float | None = None, max_new_tokens: int | None = None) -> dict:
        """The sampling keywords every backend takes (``rollouts.backends``); None: this section's value."""
        return dict(
            max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=self.stop,
            batch_size=self.generation_batch_size,
        )

    def check_registered(self) -> None:
        """The backend and sampler names exist (run last, as ``AlgorithmConfig.check_registered``)."""
        from rollouts.backends import BACKENDS, SAMPLERS

        _check(self.backend in BACKENDS, f"rollout.backend: unknown {self.backend!r}; known: {BACKENDS.names()}")
        _check(self.sampler in SAMPLERS, f"rollout.sampler: unknown {self.sampler!r}; known: {SAMPLERS.names()}")


@dataclass(frozen=True)
class AlgorithmConfig:
    num_generations: int = 8
    """G: completions sampled per prompt (the group)."""
    batch_size: int = 64
    """Completions per step over all processes (prompts per step = batch_size / num_generations); each of N
    processes takes batch_size / N, which must be a multiple of num_generations (a group never spans processes)."""
    mini_batch_size: int | None = None
    """Completions per optimizer update over all processes; None = one update per pass over the batch."""
    num_iterations: int = 1
    """mu: passes over each rollout batch (mu > 1 reuses samples with importance ratios, GRPO's mu)."""
    advantage: str = "grpo"
    """Advantage estimator (``grpo``, ``rloo``)."""
    std_scale: str = "group"
    """Advantage scaling (``rl.advantages.STD_SCALES``): per-group std (``group``, GRPO), batch std (``batch``), or
    ``none`` (Dr. GRPO; the only one ``rloo`` takes)."""
    loss: str = "grpo"
    """Policy loss: ``grpo``, ``dapo``, ``dr_grpo``, ``gspo``, ``gspo_token``, ``cispo``."""
    clip_low: float | None = None
    """Ratio clip below 1 (1 - clip_low); None = the loss's default (0.2 for token losses, 3e-4 for GSPO)."""
    clip_high: float | None = None
    """Ratio clip above 1 (1 + clip_high); DAPO's clip-higher uses 0.28."""
    beta: float = 0.0
    """KL coefficient to the reference model; 0 loads no reference (DAPO, Dr. GRPO)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator for the ``beta`` loss term (``rl.kl``): k3 (GRPO's, the forward KL's gradient) or k2
    (the reverse KL's gradient); k1's gradient is zero in expectation, so it is refused when ``beta > 0``."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage) and sample more prompts until
    the batch holds batch_size / num_generations informative groups (reward metrics still cover every group)."""
    max_sampling_rounds: int = 3
    """Generation rounds per step allowed to dynamic sampling; if still short, the step trains on what it has."""
    mask_truncated: bool = False
    """DAPO overlong filtering: completions cut at rollout.max_new_tokens are masked out of the loss."""
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    """Importance weights for the rollout engine / training forward mismatch (``rl.config_engine``, ``rl.correction``):
    ``mode`` (auto: TIS with vLLM), ``level``, ``cap``."""

    def __post_init__(self) -> None:
        G = self.num_generations
        _check(G >= 2, f"algorithm.num_generations: must be >= 2 for group-relative advantages, got {G}")
        _check(
            self.batch_size > 0 and self.batch_size % G == 0,
            f"algorithm.batch_size: {self.batch_size} is not a positive multiple of algorithm.num_generations={G}; "
            f"use e.g. {G * max(1, self.batch_size // G)}",
        )
        mb = self.mini_batch_size or self.batch_size
        _check(
            0 < mb <= self.batch_size and self.batch_size % mb == 0,
            f"algorithm.mini_batch_size: {mb} must divide algorithm.batch_size={self.batch_size}",
        )
        _check(self.num_iterations >= 1, f"algorithm.num_iterations: must be >= 1, got {self.num_iterations}")
        _check(self.beta >= 0, f"algorithm.beta: must be >= 0, got {self.beta}")
        rounds = self.max_sampling_rounds
        _check(rounds >= 1, f"algorithm.max_sampling_rounds: must be >= 1, got {rounds}")
        for name in ("clip_low", "clip_high"):
            v = getattr(self, name)
            _check(v is None or v >= 0, f"algorithm.{name}: must be >= 0, got {v}")

    def check_registered(self) -> None:
        """The loss and advantage names exist and take the options set here (each asks the registered object).
        Kept out of ``__post_init__`` and run last (``RecipeConfig``): the registries import torch, and every other
        mistake in a recipe is reported without it."""
        from rl.advantages import ADVANTAGES, STD_SCALES
        from rl.kl import KL_ESTIMATORS
        from rl.losses import LOSSES

        _check(self.loss in LOSSES, f"algorithm.loss: unknown {self.loss!r}; known: {LOSSES.names()}")
        loss = LOSSES.get(self.loss)
        for name in ("clip_low", "clip_high"):
            _check(
                getattr(self, name) is None or name in loss.options,
                f"algorithm.{name}: the {self.loss!r} loss has no ratio clip; remove algorithm.{name} "
                f"(its options: {sorted(loss.options)})",
            )
        _check(
            self.advantage in ADVANTAGES,
            f"algorithm.advantage: unknown {self.advantage!r}; known: {ADVANTAGES.names()}",
        )
        usable = [k for k in KL_ESTIMATORS.names() if KL_ESTIMATORS.get(k).loss_gradient is not None]
        _check(
            self.beta == 0 or KL_ESTIMATORS.get(self.kl_estimator).loss_gradient is not None,
            f"algorithm.kl_estimator: {self.kl_estimator!r} has zero expected gradient as a loss term (rl/kl.py): "
            f"beta = {self.beta} does not regularise; use one of {usable} (k3 is GRPO's; k2 gives the reverse "
            "KL's gradient)",
        )
        s = self.std_scale
        _check(s in STD_SCALES, f"algorithm.std_scale: unknown {s!r}; known: {STD_SCALES.names()}")
        choices = ADVANTAGES.get(self.advantage).std_scale_choices
        _check(
            s in choices,
            f"algorithm.std_scale: the {self.advantage!r} advantage takes {choices}, got {s!r}; set "
            f"algorithm.std_scale: {choices[0]}",
        )

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.num_generations


@dataclass(frozen=True)
class RewardsConfig:
    rules: list[RewardSpec] = field(
        default_factory=lambda: [RewardSpec("math_accuracy", 1.0), RewardSpec("r1_format_strict", 0.2)]
    )
    """Rewards as names + weights (+ kwargs, + column renames); the total is the weighted sum."""
    max_error_fraction: float = 0.1
    """Stop the run when more than this share of one batch fails for one reward. Below it, a failed sample gets no
    total and is left out of the loss."""

    def __post_init__(self) -> None:
        _check(len(self.rules) > 0, "rewards.rules: at least one reward is needed")
        _check(0 <= self.max_error_fraction <= 1, "rewards.max_error_fraction: must be in [0, 1]")


@dataclass(frozen=True)
class TrainingConfig:
    max_steps: int = 100
    """RL steps (each: sample a batch, score, update)."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warmup, in optimizer updates."""
    lr_schedule: str = "constant"
    """Decay after warmup, over all optimizer updates of the run: ``constant``, ``cosine`` or ``linear``
    (``rl.schedules.SCHEDULES``)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip; 0 disables it."""
    micro_batch_size: int | None = None
    """Rows per forward/backward in each process; gradients accumulate over the process's share of a mini-batch.
    None = that whole share at once."""
    seed: int = 0
    """Seed of sampling, shuffling and initialisation."""
    device: str = "auto"
    """``auto`` (accelerate's choice: each process's own GPU, else CPU), ``cpu``, ``cuda``, ``cuda:1`` (one
    process only)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast for forward passes through accelerate (weights stay in ``model.dtype``); fp16 adds loss scaling."""
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    """``adamw`` (torch) or ``adamw_8bit`` (bitsandbytes: 8-bit optimizer states, ~4x smaller; GPU only). Either
    steps float32 master weights when trainable weights are bf16 / fp16 (see ``model.dtype``), except under
    FSDP / DeepSpeed, whose engines keep their own."""
    logprob_micro_batch_size: int | None = None
    """Rows per no-grad log-prob forward (old policy, reference); None = training.micro_batch_size. On CUDA an
    out-of-memory error halves it and retries, and the smaller size is kept for the rest of the run."""
    torch_threads: int | None = None
    """CPU threads for torch; None keeps torch's default."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 0, f"training.max_steps: must be >= 0, got {self.max_steps}")
        _check(math.isfinite(self.lr) and self.lr > 0, f"training.lr: must be a positive number, got {self.lr}")
        _check(self.weight_decay >= 0, f"training.weight_decay: must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"training.warmup_steps: must be >= 0, got {self.warmup_steps}")
        _check(self.max_grad_norm >= 0, f"training.max_grad_norm: must be >= 0, got {self.max_grad_norm}")
        _check(len(self.adam_betas) == 2, f"training.adam_betas: expected two numbers, got {self.adam_betas}")
        _check(self.micro_batch_size is None or self.micro_batch_size > 0, "training.micro_batch_size: must be > 0")
        _check(
            self.logprob_micro_batch_size is None or self.logprob_micro_batch_size > 0,
            "training.logprob_micro_batch_size: must be > 0",
        )

    def check_registered(self) -> None:
        """The schedule name exists (run last, as ``AlgorithmConfig.check_registered``)."""
        from rl.schedules import SCHEDULES

        _check(
            self.lr_schedule in SCHEDULES,
            f"training.lr_schedule: unknown {self.lr_schedule!r}; known: {SCHEDULES.names()}",
        )


@dataclass(frozen=True)
class LoggingConfig:
    output_dir: str | None = None
    """Run directory; None = ``runs/<recipe file stem>``. ``--output-dir`` overrides it."""
    save_every: int = 25
    """Checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest removed first)."""
    progress: bool = True
    """Live progress display (rich)."""
    eval_every: int = 0
    """Held-out greedy evaluation every N steps (0 = only before and after training)."""
    rollouts_every: int = 1
    """Store the step's completions, rewards and advantages in ``RUN/rollouts/step-N.parquet`` every N steps
    (0 = never). Open them with ``rollouts.load(run_dir)`` or ``r1kit rollouts RUN``."""
    rollouts_max_groups: int | None = None
    """Groups (prompts) stored per sampled step, whole groups only; None stores every group."""
    trackers: list[str] = field(default_factory=list)
    """Where metrics go besides ``metrics.jsonl`` (always written): any of ``tensorboard``, ``wandb``, ``trackio``,
    ``mlflow``. Each needs its package (``pip install 'r1kit[wandb]'``)."""
    project: str = "r1kit"
    """Project / experiment name for W&B, trackio and MLflow."""
    run_name: str | None = None
    """Run name for the trackers; None = the run directory's name."""
    plots: bool = True
    """Write PNG training curves to ``RUN/plots`` at the end of the run (``r1kit plot RUN`` does it any time)."""

    def __post_init__(self) -> None:
        from rl.reporting.trackers import TRACKERS

        _check(self.save_every >= 0, f"logging.save_every: must be >= 0, got {self.save_every}")
        _check(self.keep_checkpoints >= 1, f"logging.keep_checkpoints: must be >= 1, got {self.keep_checkpoints}")
        _check(self.eval_every >= 0, f"logging.eval_every: must be >= 0, got {self.eval_every}")
        _check(self.rollouts_every >= 0, f"logging.rollouts_every: must be >= 0, got {self.rollouts_every}")
        _check(
            self.rollouts_max_groups is None or self.rollouts_max_groups > 0,
            f"logging.rollouts_max_groups: must be > 0 or null (all groups), got {self.rollouts_max_groups}",
        )
        for name in self.trackers:
            _check(name in TRACKERS, f"logging.trackers: unknown tracker {name!r}; known: {TRACKERS.names()}")
            # Checked here, before any model loads (each tracker's library is named as the tracker is).
            _check(
                importlib.util.find_spec(name) is not None,
                f"logging.trackers: {name!r} needs the {name} package, which is not installed; "
                f"pip install 'r1kit[{name}]', or remove {name} from logging.trackers",
            )
        _check(len(set(self.trackers)) == len(self.trackers), f"logging.trackers: duplicates in {self.trackers}")


@dataclass(frozen=True)
class MoEConfig:
    """Routing controls for Mixture-of-Experts policies (ignored by dense models unless a feature is requested)."""

    telemetry: bool = True
    """Log per-step routing metrics: ``moe/flip_rate``, ``moe/load_max_over_mean``, ``moe/load_entropy/layer_i``,
    ``moe/expert_load`` (definitions in ``rl/moe/control.py``)."""
    routing_replay: bool = False
    """Record each token's top-k experts in the old-policy forward and force them in the training forwards (GSPO's
    Routing Replay); gate weights still come from the live router. Adds the old-policy forward to on-policy steps."""
    router_aux_loss_coef: float = 0.0
    """Weight of the load-balancing loss (Switch eq. 4, over real tokens, mean over MoE layers) added to the policy
    loss; 0 disables it. With LoRA the routers are frozen, so it only shapes the adapters feeding them."""
    freeze_router: bool = False
    """``requires_grad = False`` on router weights (full fine-tuning; LoRA never adapts routers anyway)."""

    def __post_init__(self) -> None:
        c = self.router_aux_loss_coef
        _check(math.isfinite(c) and c >= 0, f"moe.router_aux_loss_coef: must be a number >= 0, got {c}")


@dataclass(frozen=True)
class RecipeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Read by ``r1kit sft`` only."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Read by ``r1kit sample`` only."""

    def __post_init__(self) -> None:
        mb = self.algorithm.mini_batch_size or self.algorithm.batch_size
        micro = self.training.micro_batch_size
        _check(
            micro is None or mb % micro == 0,
            f"training.micro_batch_size: {micro} must divide the mini-batch ({mb} completions)",
        )
        self.rollout.check_registered()
        self.algorithm.check_registered()
        self.training.check_registered()
        check_engine(self.rollout, self.algorithm)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Read a recipe YAML (or start from defaults when ``path`` is None), apply ``a.b=c`` overrides, validate.

    Relative data paths and reward files are looked up beside the recipe first, then in the working directory.
    ``--set data.path=...`` on a recipe with a synthetic ``data.task`` replaces the task.
    """
    data: dict[str, Any] = {} if path is None else read_yaml_mapping(path, "recipe", "sections")
    recipe_task = (data.get("data") or {}).get("task") if isinstance(data.get("data"), dict) else None
    apply_overrides(data, list(overrides))
    check_keys(RecipeConfig, data)
    _path_replaces_task(data, recipe_task, overrides)
    if path is not None:
        _resolve_beside(data, Path(path).resolve().parent)
    return from_dict(RecipeConfig, data)


def recipe_from_dict(data: dict[str, Any], *, folder: Path, prefix: str = "") -> RecipeConfig:
    """A recipe given as a mapping of sections (``r1kit pipeline``'s stages): keys checked, relative data and
    reward files looked up beside ``folder`` first, validated; ``prefix`` starts every key an error names."""
    import copy

    data = copy.deepcopy(data)
    try:
        check_keys(RecipeConfig, data)
        _resolve_beside(data, folder)
        return from_dict(RecipeConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def _path_replaces_task(data: dict[str, Any], recipe_task: str | None, overrides: Sequence[str]) -> None:
    """A data file given on the command line replaces the recipe's synthetic task; so does a recipe that names a
    file and no task (the task's default, ``arith``, is for the tiny recipe)."""
    sec = data.get("data")
    if not isinstance(sec, dict) or sec.get("path") is None:
        return
    set_keys = {o.partition("=")[0].strip() for o in overrides}
    if "data.task" in set_keys:
        return  # the user chose both; DataConfig says what is wrong if both are set
    if "task" not in sec:
        sec["task"] = None
    elif "data.path" in set_keys and sec.get("task") is not None:
        log.info("data.path=%s replaces the recipe's data.task=%s", sec["path"], recipe_task)
        sec["task"] = None


def _resolve_beside(data: dict[str, Any], folder: Path) -> None:
    """Make relative ``data.path`` and ``rewards.rules[].name`` files absolute when they exist beside the recipe."""

    def beside(rel: str) -> str | None:
        p = Path(rel).expanduser()
        return str(folder / p) if not p.is_absolute() and (folder / p).exists() else None

    sec = data.get("data")
    if isinstance(sec, dict) and isinstance(sec.get("path"), str):
        sec["path"] = beside(sec["path"]) or sec["path"]
    sec = data.get("sft")
    if isinstance(sec, dict) and isinstance(sec.get("dataset"), str):
        sec["dataset"] = beside(sec["dataset"]) or sec["dataset"]
    rules = (data.get("rewards") or {}).get("rules") if isinstance(data.get("rewards"), dict) else None
    for rule in rules if isinstance(rules, list) else ():
        name = rule.get("name") if isinstance(rule, dict) else None
        if isinstance(name, str) and ":" in name:
            target, _, attr = name.rpartition(":")
            if target.endswith(".py") and (found := beside(target)):
                rule["name"] = f"{found}:{attr}"


def recipe_changes(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two resolved recipes (plain dicts), as ``key -> (old, new)``.

    >>> recipe_changes({"a": {"b": 1, "c": [1]}, "d": 2}, {"a": {"b": 2, "c": [1]}, "d": 2, "e": 0})
    {'a.b': (1, 2), 'e': (None, 0)}
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in [*old, *(k for k in new if k not in old)]:
            out.update(recipe_changes(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def dump_recipe(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
