"""Recipe configuration: one small frozen dataclass per concern. A recipe YAML maps onto ``RecipeConfig``.

Every field has a docstring (the recipe reference in README.md is generated from them by ``r1kit config-doc``);
values are validated in ``__post_init__`` with a message naming the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rewards.scoring import RewardSpec
from rl.configio import ConfigError, apply_overrides, from_dict, to_dict
from rl.tiny import PretrainConfig


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "tiny://deepseek_v3/arith"
    """Hub id, local path, or ``tiny://<family>/<task>`` (a tiny MoE built and cached locally)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when loading by hub id."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights dtype. bf16 on GPUs; float32 on CPU."""
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
    """Synthetic task generated locally (``arith``); set to null when ``path`` is used."""
    path: str | None = None
    """A JSONL file or a hub dataset id with a prompt column and the columns the rewards need."""
    split: str = "train"
    """Dataset split when ``path`` is a hub id."""
    prompt_column: str = "prompt"
    """Column holding the question (formatted with ``template``)."""
    template: str = "qa"
    """Prompt template name: ``qa`` (short, for tiny models) or ``r1`` (DeepSeek-R1-Zero's)."""
    num_train: int = 4000
    """Training prompts to draw (synthetic) or keep at most (files)."""
    num_eval: int = 256
    """Held-out prompts, never used in training, scored greedily before and after training."""
    seed: int = 1234
    """Seed of the synthetic train/eval split."""

    def __post_init__(self) -> None:
        _check((self.task is None) != (self.path is None), "data: set exactly one of data.task and data.path")
        _check(self.num_train > 0, f"data.num_train: must be > 0, got {self.num_train}")
        _check(self.num_eval >= 0, f"data.num_eval: must be >= 0, got {self.num_eval}")


@dataclass(frozen=True)
class RolloutConfig:
    backend: Literal["transformers"] = "transformers"
    """Generation engine."""
    max_new_tokens: int = 64
    """Completion length cap; longer completions are cut and marked ``finish_reason=length``."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts (evaluation is greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it."""
    top_k: int = 0
    """Top-k sampling; 0 disables it."""
    generation_batch_size: int | None = None
    """Rows per ``generate`` call (memory bound); None generates the whole step at once."""
    sampler: Literal["r1kit", "generate"] = "r1kit"
    """Decoding loop: r1kit's (each prompt prefilled once per group, finished rows dropped) or transformers'
    ``model.generate`` (the reference; same tokens under the same seed, slower on small models)."""

    def __post_init__(self) -> None:
        _check(self.max_new_tokens > 0, f"rollout.max_new_tokens: must be > 0, got {self.max_new_tokens}")
        _check(self.temperature > 0, f"rollout.temperature: must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"rollout.top_p: must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, f"rollout.top_k: must be >= 0, got {self.top_k}")


@dataclass(frozen=True)
class AlgorithmConfig:
    num_generations: int = 8
    """G: completions sampled per prompt (the group)."""
    batch_size: int = 64
    """Completions per step (prompts per step = batch_size / num_generations)."""
    mini_batch_size: int | None = None
    """Completions per optimizer update; None = one update per pass over the batch."""
    num_iterations: int = 1
    """mu: passes over each rollout batch (mu > 1 reuses samples with importance ratios, GRPO's mu)."""
    advantage: str = "grpo"
    """Advantage estimator (``grpo``, ``rloo``)."""
    std_scale: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: per-group std (GRPO), batch std, or none (Dr. GRPO)."""
    loss: str = "grpo"
    """Policy loss: ``grpo``, ``dapo``, ``dr_grpo``, ``gspo``, ``gspo_token``, ``cispo``."""
    clip_low: float | None = None
    """Ratio clip below 1 (1 - clip_low); None = the loss's default (0.2 for token losses, 3e-4 for GSPO)."""
    clip_high: float | None = None
    """Ratio clip above 1 (1 + clip_high); DAPO's clip-higher uses 0.28."""
    beta: float = 0.0
    """KL coefficient to the reference model; 0 loads no reference (DAPO, Dr. GRPO)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator (k3 is GRPO's)."""

    def __post_init__(self) -> None:
        from rl.advantages import ADVANTAGES
        from rl.losses import LOSSES

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
        for name in ("clip_low", "clip_high"):
            v = getattr(self, name)
            _check(v is None or v >= 0, f"algorithm.{name}: must be >= 0, got {v}")
        _check(self.loss in LOSSES, f"algorithm.loss: unknown {self.loss!r}; known: {LOSSES.names()}")
        _check(
            self.advantage in ADVANTAGES,
            f"algorithm.advantage: unknown {self.advantage!r}; known: {ADVANTAGES.names()}",
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
    """Stop the run when more than this share of one batch fails for one reward (failures abstain)."""

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
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warmup, over all optimizer updates of the run."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip; 0 disables it."""
    micro_batch_size: int | None = None
    """Rows per forward/backward; gradients accumulate over a mini-batch. None = whole mini-batch at once."""
    seed: int = 0
    """Seed of sampling, shuffling and initialisation."""
    device: str = "auto"
    """``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:1``."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast for forward passes on GPU."""
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

    def __post_init__(self) -> None:
        _check(self.save_every >= 0, f"logging.save_every: must be >= 0, got {self.save_every}")
        _check(self.keep_checkpoints >= 1, f"logging.keep_checkpoints: must be >= 1, got {self.keep_checkpoints}")
        _check(self.eval_every >= 0, f"logging.eval_every: must be >= 0, got {self.eval_every}")


@dataclass(frozen=True)
class RecipeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        mb = self.algorithm.mini_batch_size or self.algorithm.batch_size
        micro = self.training.micro_batch_size
        _check(
            micro is None or mb % micro == 0,
            f"training.micro_batch_size: {micro} must divide the mini-batch ({mb} completions)",
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Read a recipe YAML (or start from defaults when ``path`` is None), apply ``a.b=c`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {str(p)!r} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {str(p)!r}: the top level must be a mapping of sections")
    apply_overrides(data, list(overrides))
    return from_dict(RecipeConfig, data)


def dump_recipe(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
