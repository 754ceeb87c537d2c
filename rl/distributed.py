"""One run over several processes, through accelerate (DDP; FSDP2 and DeepSpeed ZeRO-3 configs in
``recipes/accelerate/``). With one process every helper here is the identity, so the trainer has one code path.

Global batch semantics. ``algorithm.batch_size`` completions per step *over all N processes*. Every process draws
the same global prompt list (same sampler, same seed); process r keeps prompts ``[r::N]``, so a group never spans
processes and advantages need no communication. Each process holds batch_size / N completions (a multiple of G).

Loss normalisation. DDP averages gradients over processes. Losses that average over rows (grpo, dr_grpo, gspo)
then give the one-process update unchanged, since every process holds the same number of rows. Token-mean losses
(dapo, cispo) must divide by the token count of the *global* mini-batch: each process divides its token sum by
(global tokens / N), and the average over processes is the token mean of the whole mini-batch (``token_unit``).

Reproducible sampling across world sizes (``rollout.seeded_groups``): each group is generated alone with torch's
RNG seeded from (seed, group id), so its completions do not depend on which process holds it or which groups
share its ``generate`` call; a 2-process run then reproduces the 1-process run (tests/test_distributed.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from core.configio import ConfigError
from core.metrics import is_scalar, reduce_values, reduction_of, unwrap
from rl import fsdp
from rl.config import AlgorithmConfig, TrainingConfig
from rollouts.records import Prompt, RolloutBatch

T = TypeVar("T")
DEBUG_DUMP_ENV = "R1KIT_DEBUG_DUMP_WEIGHTS"
"""When set to a directory, every process writes its trainable weights there at the end of a run
(``weights-rank{r}.safetensors``): the distributed test checks that all processes hold the same model."""


@dataclass(frozen=True)
class LocalSizes:
    """Rows per process: the step's share, one mini-batch's share, and rows per forward/backward."""

    batch: int
    mini: int
    micro: int


def local_sizes(a: AlgorithmConfig, t: TrainingConfig, world_size: int) -> LocalSizes:
    """Split the global batch over ``world_size`` processes; raise naming the key and the fix when it cannot be.

    >>> local_sizes(AlgorithmConfig(num_generations=4, batch_size=16), TrainingConfig(micro_batch_size=2), 2)
    LocalSizes(batch=8, mini=8, micro=2)
    """
    G, N = a.num_generations, world_size
    if a.dynamic_sampling and N > 1:
        raise ConfigError(
            f"algorithm.dynamic_sampling: not supported with {N} processes yet (each process would filter its own "
            "groups and the processes' batches would differ in size); set it to false or run one process"
        )
    if a.std_scale == "batch" and N > 1:  # rl.advantages.batch_std reads the rewards it is given: this process's
        raise ConfigError(
            f"algorithm.std_scale: batch would be each process's own reward std under {N} processes, not the "
            "global batch's; use group (GRPO) or none (Dr. GRPO), or run one process"
        )
    if a.batch_size % (G * N):
        fix = G * N * max(1, round(a.batch_size / (G * N)))
        raise ConfigError(
            f"algorithm.batch_size: {a.batch_size} completions over {N} processes is {a.batch_size / N:g} per "
            f"process, not a multiple of algorithm.num_generations={G} (a group never spans processes); use a "
            f"multiple of num_generations x processes = {G * N}, e.g. algorithm.batch_size={fix}"
        )
    mini = a.mini_batch_size or a.batch_size
    if mini % N:
        raise ConfigError(
            f"algorithm.mini_batch_size: {mini} does not split evenly over {N} processes; use a multiple of {N}"
        )
    mini_local = mini // N
    micro = t.micro_batch_size or mini_local
    if mini_local % micro:
        raise ConfigError(
            f"training.micro_batch_size: {micro} must divide each process's share of the mini-batch "
            f"({mini} / {N} processes = {mini_local} rows)"
        )
    return LocalSizes(a.batch_size // N, mini_local, micro)


def make_accelerator(t: TrainingConfig):
    """An ``accelerate.Accelerator`` for this process: device, precision and process group from the launcher
    (``accelerate launch``, torchrun) or, without one, a single process on ``training.device``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if t.device.startswith("cuda:"):
        if launched:
            raise ConfigError(
                f"training.device: {t.device!r} pins one GPU, but this run has several processes; use auto"
            )
        torch.cuda.set_device(torch.device(t.device))
    # accelerate keeps process-wide state and refuses a second Accelerator with other settings. A launched run
    # builds one trainer per process; tests and notebooks build several in one process, each with its own
    # precision, so the state is reset here (the process group, if any, is kept).
    AcceleratorState._reset_state()
    GradientState._reset_state()
    cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
    if cpu and t.mixed_precision == "fp16":  # accelerate would silently run without autocast
        raise ConfigError("training.mixed_precision: fp16 needs a CUDA GPU; on CPU use bf16 or no")
    if cpu and launched:  # accelerate would run plain multi-process training whatever the launcher asked for
        fsdp.check_cpu_request(fsdp.requested())
    return Accelerator(cpu=cpu, mixed_precision=t.mixed_precision)


class Dist:
    """The few collective operations the trainer needs, as no-ops for a single process."""

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.rank: int = accelerator.process_index
        self.world_size: int = accelerator.num_processes
        self.is_main: bool = accelerator.is_main_process
        self.device: torch.device = accelerator.device
        # FSDP asked for on CPU processes: accelerate set up plain multi-process training, r1kit shards (rl.fsdp).
        request, kind = fsdp.requested(), getattr(getattr(accelerator, "distributed_type", None), "value", None)
        self.own_fsdp = request if kind == "MULTI_CPU" and request.strategy == "FSDP" else None

    @property
    def strategy(self) -> str:
        """How the model is spread over processes: ``FSDP``, ``DEEPSPEED``, ``MULTI_GPU``, ``MULTI_CPU`` (DDP) or
        ``NO`` (one process); what ``summary.json`` records as ``distributed_type``."""
        return "FSDP" if self.own_fsdp is not None else self.accelerator.distributed_type.value

    @property
    def sharded(self) -> bool:
        """FSDP or DeepSpeed: weights and optimizer state are split over processes (DDP keeps full copies)."""
        return self.strategy in ("FSDP", "DEEPSPEED")

    def prepare(self, model: torch.nn.Module, make_optimizer, *, mixed_precision: str):
        """(train_model, optimizer): ``model`` wrapped for training (DDP, FSDP2, DeepSpeed) and the optimizer
        ``make_optimizer(params)`` builds over its trainable parameters. Under r1kit's own FSDP2 the model is
        sharded in place first (the optimizer must see the sharded parameters), and accelerate wraps nothing."""
        if self.own_fsdp is not None:
            fsdp.shard(model, self.own_fsdp, world_size=self.world_size, mixed_precision=mixed_precision)
            return model, make_optimizer([p for p in model.parameters() if p.requires_grad])
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        train_model, optimizer = self.accelerator.prepare(model, optimizer)
        from torch.distributed.fsdp import FSDPModule

        if isinstance(train_model, FSDPModule):  # accelerate's FSDP2 (GPUs): the root as rl.fsdp.shard keeps it
            train_model.set_reshard_after_forward(False, recurse=False)
        return train_model, optimizer

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor | None:
        """The gradients' global norm before clipping (None: DeepSpeed clips inside its step)."""
        if self.own_fsdp is not None:  # DTensor gradients: the norm is computed over all shards
            return fsdp.local_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))
        return self.accelerator.clip_grad_norm_(params, max_norm)

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process (a collective: every process calls it)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def pad_to_equal(self, items: list[T], *, filler: T) -> tuple[list[T], int]:
        """``items`` (this process's share) padded with ``filler`` to the largest share, and the number of real
        items: with sharded weights every forward is collective, so every process must generate for as many rows
        as the others, an empty share included. Unchanged when the weights are whole."""
        if not self.sharded or self.world_size == 1:
            return items, len(items)
        most = int(max(self.gather_objects(len(items))))
        return items + [filler] * (most - len(items)), len(items)

    def local_sizes(self, a: AlgorithmConfig, t: TrainingConfig) -> LocalSizes:
        sizes = local_sizes(a, t, self.world_size)
        if self.accelerator.distributed_type.value == "DEEPSPEED" and sizes.micro < sizes.mini:
            raise ConfigError(
                f"training.micro_batch_size: DeepSpeed steps the optimizer inside every backward, so r1kit cannot "
                f"accumulate micro-batches under it; set training.micro_batch_size={sizes.mini} (each process's "
                "share of the mini-batch) or launch with recipes/accelerate/fsdp2.yaml"
            )
        return sizes

    def full_state_dict(self, train_model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Under FSDP / ZeRO-3, the whole model's state dict gathered from the shards (complete on process 0;
        every process must call this). None otherwise: the plain module already holds full tensors."""
        if self.own_fsdp is not None:
            return fsdp.full_state_dict(train_model)
        return self.accelerator.get_state_dict(train_model) if self.sharded else None

    def sharded_checkpoint(self, model: torch.nn.Module, optimizer):
        """(save, load) of the sharded weights and optimizer state into / from a directory, each a collective
        (``rl.fsdp``, torch.distributed.checkpoint); (None, None) where checkpoints hold whole weights."""
        if self.own_fsdp is None:
            return None, None
        return (lambda path: fsdp.save_sharded(model, optimizer, path)), (
            lambda path: fsdp.load_sharded(model, optimizer, path)
        )

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: items ``[rank::world_size]``."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def gather(self, x_B: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's ``x_B`` (same length on all) in rank order, on CPU."""
        if self.world_size == 1:
            return x_B
        return self.accelerator.gather(x_B.to(self.device)).cpu()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum of each value over processes."""
        if self.world_size == 1:
            return dict(values)
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        return dict(zip(values, self.accelerator.reduce(t, "sum").tolist(), strict=True))

    def token_unit(self, n_tokens: torch.Tensor) -> torch.Tensor:
        """The divisor of a token-mean loss on this process: the mini-batch's global token count / N."""
        if self.world_size == 1:
            return n_tokens
        total = self.accelerator.reduce(n_tokens.detach().to(self.device, torch.float64), "sum")
        return (total / self.world_size).to(n_tokens.device)

    def no_sync(self, model: torch.nn.Module, *, last: bool):
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP2) on all but the last micro-batch of a
        mini-batch (accumulation)."""
        if last or self.world_size == 1:
            return contextlib.nullcontext()
        if self.own_fsdp is not None:
            return _fsdp2_no_sync(model)
        return self.accelerator.no_sync(model)

    def reduce_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Metrics of the whole step from every process's own, as plain values. Each scalar combines as declared
        where it is defined (``core.metrics``: ``Sum`` for counts and throughput, ``Max`` for maxima and wall times,
        a plain number is averaged; processes hold equal numbers of rows). Non-scalar values (e.g. per-expert load
        lists) are kept when equal on all processes, else averaged element-wise."""
        out = unwrap(metrics)
        if self.world_size == 1:
            return out
        keys = [k for k, v in metrics.items() if is_scalar(v)]
        t = torch.tensor([[float(out[k]) for k in keys]], dtype=torch.float64, device=self.device)
        all_NK = self.accelerator.gather(t).cpu()
        out.update({k: reduce_values(all_NK[:, i].tolist(), reduction_of(metrics[k])) for i, k in enumerate(keys)})
        others = [k for k in metrics if k not in set(keys)]
        if others:
            per_rank = self.gather_objects({k: out[k] for k in others})
            for k in others:
                vals = [m[k] for m in per_rank]
                out[k] = vals[0] if all(v == vals[0] for v in vals) else torch.tensor(vals).mean(0).tolist()
        return out


@contextlib.contextmanager
def _fsdp2_no_sync(model: torch.nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def generate_seeded(
    backend,
    prompts: Sequence[Prompt],
    group_ids: Sequence[int],
    *,
    num_generations: int,
    seed: int,
    device: torch.device,
) -> RolloutBatch:
    """Each group generated alone, torch's RNG seeded from (seed, group id) and restored afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    completions = []
    for prompt, gid in zip(prompts, group_ids, strict=True):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed * 1_000_003 + gid)
            completions.extend(backend.generate([prompt], [gid], num_generations=num_generations).completions)
    return RolloutBatch(completions)


def dump_weights_for_debug(params: dict[str, torch.Tensor], rank: int) -> None:
    """With ``R1KIT_DEBUG_DUMP_WEIGHTS=<dir>``: this process's trainable weights to ``<dir>/weights-rank{r}``."""
    out = os.environ.get(DEBUG_DUMP_ENV)
    if not out:
        return
    from safetensors.torch import save_file

    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(params, str(Path(out) / f"weights-rank{rank}.safetensors"))
