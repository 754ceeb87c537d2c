"""The recipe sections of ``r1kit sft`` and ``r1kit sample`` (``RecipeConfig.sft`` / ``.sample``): read by those
commands only, kept here so ``rl/config.py`` stays one sitting's read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.configio import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class SFTConfig:
    """``r1kit sft``: supervised fine-tuning on (prompt, completion) rows, loss on completion tokens only (the
    cold start, SFT on rejection samples, distillation). The run's held-out accuracy before and after comes from
    the recipe's ``data``, ``rollout`` and ``rewards`` sections, as in ``r1kit train``; its length from
    ``training.max_steps`` (or ``epochs``), its optimizer from the other ``training`` keys. ``r1kit train`` ignores
    this section."""

    dataset: str | None = None
    """The rows: a local JSONL/JSON/Parquet/CSV file or directory (e.g. ``r1kit sample``'s ``samples.jsonl``), or a
    hub dataset id; null with ``task``."""
    task: str | None = None
    """Instead of ``dataset``: synthetic traces of a ``rollouts.tasks`` task (``arith``), prompts written with
    ``data.template``, completions in the R1 format; drawn from the task's training split (never its held-out
    prompts)."""
    mistake_rate: float = 0.0
    """With ``task``: share of traces whose answer carries the task's systematic mistake (``rollouts.tasks.DEMOS``)."""
    num_rows: int | None = None
    """Rows to use: synthetic rows to draw (default 256), or at most this many of the dataset (default all)."""
    subset: str | None = None
    """Hub dataset configuration name."""
    split: str = "train"
    """Dataset split when ``dataset`` is a hub id or a directory."""
    prompt_column: str = "prompt"
    """Column holding the prompt text exactly as the model should see it (TRL's prompt-completion format; what
    ``r1kit sample`` writes). Ignored when ``question_column`` is set."""
    question_column: str | None = None
    """Column holding a bare question instead, written into a prompt with ``data.template`` (hub datasets such as
    s1K's ``question``)."""
    completion_column: str = "completion"
    """Column holding the completion text. Ignored when ``completion_template`` is set."""
    completion_template: str | None = None
    """Build the completion from several columns, e.g. ``"<think>{deepseek_thinking_trajectory}</think><answer>
    {deepseek_attempt}</answer>"``; ``{name}`` is the row's column."""
    batch_size: int = 16
    """Rows per optimizer step (accumulated over ``training.micro_batch_size`` rows at a time)."""
    epochs: float | None = None
    """Passes over the rows; when set, the run takes ceil(epochs * rows / batch_size) steps and
    ``training.max_steps`` is not used."""
    max_length: int | None = 1024
    """Tokens per row (prompt + completion), longer rows truncated on the right; null keeps every token."""
    eval_every: int = 0
    """Held-out greedy evaluation every N steps (0 = only before and after)."""

    def __post_init__(self) -> None:
        _check(
            self.dataset is None or self.task is None,
            "sft: set one of sft.dataset (a file or hub id of prompt/completion rows) and sft.task (a synthetic "
            f"task), not both; got dataset={self.dataset!r}, task={self.task!r}",
        )
        _check(0 <= self.mistake_rate <= 1, f"sft.mistake_rate: must be in [0, 1], got {self.mistake_rate}")
        _check(self.num_rows is None or self.num_rows > 0, f"sft.num_rows: must be > 0, got {self.num_rows}")
        _check(self.batch_size > 0, f"sft.batch_size: must be > 0, got {self.batch_size}")
        _check(self.epochs is None or self.epochs > 0, f"sft.epochs: must be > 0 or null, got {self.epochs}")
        _check(self.max_length is None or self.max_length > 1, f"sft.max_length: must be > 1, got {self.max_length}")
        _check(self.eval_every >= 0, f"sft.eval_every: must be >= 0, got {self.eval_every}")

    def check_source(self) -> None:
        """``r1kit sft`` needs rows: checked when it runs (``r1kit train`` ignores this section)."""
        _check(
            self.dataset is not None or self.task is not None,
            "sft: no rows to train on; set sft.dataset (a file or hub id of prompt/completion rows, e.g. an r1kit "
            "sample output's samples.jsonl) or sft.task (a synthetic task such as arith)",
        )


@dataclass(frozen=True)
class SampleConfig:
    """``r1kit sample``: rejection sampling. k completions per prompt with the recipe's rollout backend and
    settings, scored by its rewards, filtered, written as a dataset that ``r1kit sft`` and ``datasets`` load
    (``samples.jsonl``), with each prompt's pass rate (``pass_rates.jsonl``). ``r1kit train`` ignores it."""

    k: int = 8
    """Completions sampled per prompt."""
    prompts: Literal["train", "eval"] = "train"
    """Which of the recipe's prompt sets to sample: the training prompts (rejection sampling, distillation) or the
    held-out ones."""
    limit: int | None = None
    """Sample at most this many prompts (the first ones, in the set's order); null: all."""
    temperature: float | None = None
    """Sampling temperature; null: ``rollout.temperature``."""
    accuracy_reward: str | None = None
    """Reward (a rule's label: its ``name``, or ``name@i`` when listed twice) that decides correctness; null: the
    first rule. A sample is correct when it scores >= 1.0 (an abstention is not)."""
    require_correct: bool = True
    """Keep only correct samples (the verifier filter of R1's rejection sampling)."""
    format_reward: str | None = None
    """Reward that checks the format; null: the first other rule whose name contains ``format`` (none: no filter)."""
    require_format: bool = True
    """Keep only samples that score >= 1.0 on the format reward (when there is one)."""
    language_reward: str | None = None
    """Reward that checks language consistency (e.g. ``language_consistency``); null: no language filter."""
    min_language: float = 1.0
    """Keep only samples scoring at least this on ``language_reward``."""
    max_completion_tokens: int | None = None
    """Drop samples longer than this many tokens."""
    drop_truncated: bool = True
    """Drop completions cut at ``rollout.max_new_tokens`` (they never finished)."""
    dedupe: bool = True
    """Keep one of identical completions of a prompt (after stripping whitespace)."""
    max_per_prompt: int | None = None
    """Keep at most N samples per prompt, the best first (total reward, then shortest): 1 is best-of-k; null:
    every sample that passes."""
    seed: int = 0
    """Seed of the sampling."""

    def __post_init__(self) -> None:
        _check(self.k >= 1, f"sample.k: must be >= 1, got {self.k}")
        _check(self.limit is None or self.limit > 0, f"sample.limit: must be > 0 or null, got {self.limit}")
        t = self.temperature
        _check(t is None or t > 0, f"sample.temperature: must be > 0 or null, got {t}")
        m = self.max_completion_tokens
        _check(m is None or m > 0, f"sample.max_completion_tokens: must be > 0 or null, got {m}")
        n = self.max_per_prompt
        _check(n is None or n > 0, f"sample.max_per_prompt: must be > 0 or null, got {n}")
