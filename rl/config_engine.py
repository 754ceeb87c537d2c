"""Recipe sections for the rollout engine and for what a second engine brings: ``rollout.vllm`` (the in-process
vLLM engine of ``rollout.backend: vllm``) and ``algorithm.rollout_correction`` (importance weights for the
mismatch between the engine's log-probabilities and the training forward's). Kept beside ``rl.config``, which
embeds them; same conventions (frozen dataclass, a docstring per field, errors that name the key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from core.configio import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class VLLMConfig:
    """vLLM's ``LLM`` in the training process (TRL's ``vllm_mode="colocate"``): one engine per process, sharing
    the device with training. Read only with ``rollout.backend: vllm``."""

    gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory the engine may take (weights + KV cache), as vLLM's argument; the rest is
    training's. TRL's colocate default. Ignored on CPU (see ``kv_cache_gib``)."""
    kv_cache_gib: float | None = None
    """KV-cache size in GiB (vLLM's ``kv_cache_memory_bytes``). None: on CPU 1 GiB (vLLM-CPU's own default, 4 GiB,
    is sized for serving), on a GPU what ``gpu_memory_utilization`` leaves."""
    max_model_len: int | None = None
    """Longest prompt + completion the engine accepts; None: the model config's ``max_position_embeddings``."""
    tensor_parallel_size: int = 1
    """Only 1: weights are handed to the engine in this process (``reload_weights`` through ``collective_rpc``),
    which needs the engine's worker here."""
    sleep: bool | None = None
    """Release the engine's memory between generation and training (vLLM sleep mode, level 1: weights offloaded,
    KV cache dropped). None: on with CUDA; vLLM's CPU build has no sleep mode."""
    enforce_eager: bool | None = None
    """No CUDA graphs / torch.compile. None: on for CPU (compilation costs more than it saves on small models),
    off on a GPU."""
    check_sync: bool = True
    """After the first weight sync, score one prompt with both the engine and the training module and stop the run
    when float32 log-probabilities differ by more than 1e-3 (a sync that silently leaves stale weights behind;
    bf16 / fp16 differences are only logged, ``vllm/sync_max_abs_diff``)."""
    seed_requests: bool = False
    """Seed every generation's requests from torch's random state (one draw per call; vLLM gives the G samples of a
    prompt consecutive seeds), so a run that re-seeds torch redraws the same samples, as r1kit's own sampler does.
    ``r1kit sample`` always turns it on: a resumed chunk must draw what the uninterrupted run drew. Off otherwise:
    vLLM samples seeded requests one by one (a per-request generator each), which costs little on CPU batches
    and was not measured on large GPU batches; the engine is seeded once (``training.seed`` + rank) instead."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments for ``vllm.LLM`` (e.g. ``{enable_prefix_caching: false}``); they override r1kit's."""

    def __post_init__(self) -> None:
        u = self.gpu_memory_utilization
        _check(0 < u <= 1, f"rollout.vllm.gpu_memory_utilization: must be in (0, 1], got {u}")
        k = self.kv_cache_gib
        _check(k is None or k > 0, f"rollout.vllm.kv_cache_gib: must be > 0 or null, got {k}")
        n = self.max_model_len
        _check(n is None or n > 0, f"rollout.vllm.max_model_len: must be > 0 or null, got {n}")
        _check(
            self.tensor_parallel_size == 1,
            f"rollout.vllm.tensor_parallel_size: only 1 is supported (got {self.tensor_parallel_size}): weights "
            "reach the engine in this process; run one engine per training process (accelerate launch) instead",
        )
        _check(isinstance(self.engine_kwargs, dict), "rollout.vllm.engine_kwargs: must be a mapping")

    def engine_options(self) -> dict[str, Any]:
        """The keyword arguments ``rollouts.vllm_backend.VLLMBackend`` takes from this section."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "tensor_parallel_size"}


CORRECTION_MODES = ("auto", "none", "tis", "mis")


@dataclass(frozen=True)
class RolloutCorrectionConfig:
    """Importance weights for the rollout / training mismatch (``rl.correction``): the engine that sampled a
    completion gives its tokens slightly different log-probabilities than the training forward does (other
    kernels, bf16, MoE routing flips), so the samples are mildly off-policy even on a "single on-policy" step.
    The ratio ``pi_train / pi_rollout`` per token (or per sequence) weighs the policy loss, truncated (TIS, Yao et
    al. 2025) or masked (MIS) above ``cap``. The ``mismatch/*`` metrics are logged whenever the backend returns
    log-probabilities, whatever the mode."""

    mode: str = "auto"
    """``tis`` (weights min(ratio, cap)), ``mis`` (ratio, or 0 above cap: the token or sequence leaves the loss),
    ``none`` (metrics only), or ``auto``: ``tis`` with ``rollout.backend: vllm`` (as TRL turns its correction on
    with vLLM), ``none`` with the transformers backend, whose sampler runs the training module itself."""
    level: str = "token"
    """``token``: one ratio per token; ``sequence``: the product of a completion's token ratios, one weight per
    completion."""
    cap: float = 2.0
    """The ratio's upper bound C (TIS truncates at it, MIS drops what exceeds it)."""

    def __post_init__(self) -> None:
        _check(
            self.mode in CORRECTION_MODES,
            f"algorithm.rollout_correction.mode: unknown {self.mode!r}; known: {list(CORRECTION_MODES)}",
        )
        _check(
            self.level in ("token", "sequence"),
            f"algorithm.rollout_correction.level: must be 'token' or 'sequence', got {self.level!r}",
        )
        _check(
            isinstance(self.cap, int | float) and math.isfinite(self.cap) and self.cap > 0,
            f"algorithm.rollout_correction.cap: must be a number > 0, got {self.cap!r}",
        )

    def resolved_mode(self, backend: str) -> str:
        """The mode in force with ``backend`` (``auto`` resolved).

        >>> RolloutCorrectionConfig().resolved_mode("vllm"), RolloutCorrectionConfig().resolved_mode("transformers")
        ('tis', 'none')
        """
        if self.mode != "auto":
            return self.mode
        return "tis" if backend == "vllm" else "none"


def check_engine(r, a) -> None:
    """What the chosen backend can do agrees with what the rest of the recipe asks of it (``r``: the rollout
    section, ``a``: the algorithm section; run by ``RecipeConfig``)."""
    mode = a.rollout_correction.resolved_mode(r.backend)
    _check(
        mode == "none" or r.backend != "transformers" or r.sampler == "r1kit",
        f"algorithm.rollout_correction.mode: {mode} needs the sampler's log-probs, and rollout.sampler "
        f"{r.sampler!r} records none; use rollout.sampler: r1kit or rollout_correction.mode: none",
    )
    _check(
        not (r.backend == "vllm" and r.seeded_groups),
        "rollout.seeded_groups: seeds torch's generator, which vLLM does not sample with; set it to false with "
        "rollout.backend: vllm",
    )
