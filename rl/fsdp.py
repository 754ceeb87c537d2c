"""FSDP2 on CPU processes, where accelerate does not provide it, and the sharded checkpoints of such a run.

Launched with an FSDP accelerate configuration, accelerate on GPUs shards the model itself (``fsdp2_prepare_model``).
On CPU it does not: ``Accelerator(cpu=True)`` is plain multi-process (MULTI_CPU) training and ignores the FSDP
plugin, so asking for FSDP2 silently gave DDP. r1kit shards the model itself there, as accelerate does on GPUs:
torch's ``fully_shard`` (FSDP2: each parameter a DTensor sharded over the processes on dim 0) on every decoder layer
(``TRANSFORMER_BASED_WRAP``: the model's ``_no_split_modules``, or ``fsdp_transformer_layer_cls_to_wrap``) and on
the root, with the configuration's ``fsdp_reshard_after_forward``. A request that cannot be honoured (FSDP1,
DeepSpeed on CPU) fails when the run starts (``rl.distributed.make_accelerator``).

Checkpoints are sharded: ``torch.distributed.checkpoint`` writes each process's shards of the trainable weights and
of the optimizer state into ``dcp/`` (no gather), and reads them back on resume. The final weights are gathered
into full tensors (``full_state_dict``) and saved as ``final/`` loads with transformers / peft.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from core.configio import ConfigError


@dataclass(frozen=True)
class Requested:
    """The sharding the launcher asked for (accelerate exports its configuration as environment variables)."""

    strategy: str | None  # "FSDP", "DEEPSPEED" or None (DDP / one process)
    fsdp_version: int = 2
    reshard_after_forward: bool = True
    layer_classes: tuple[str, ...] = ()  # fsdp_transformer_layer_cls_to_wrap, when the configuration names them


def requested() -> Requested:
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return Requested("DEEPSPEED")
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return Requested(None)
    classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    return Requested(
        "FSDP",
        fsdp_version=int(env.get("FSDP_VERSION", "1")),
        reshard_after_forward=env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() in ("true", "1"),
        layer_classes=classes,
    )


def check_cpu_request(req: Requested) -> None:
    """What r1kit can honour on CPU: FSDP2 (sharded by r1kit), not FSDP1 or DeepSpeed."""
    if req.strategy == "DEEPSPEED":
        raise ConfigError(
            "training.device: cpu, but the launcher asks for DeepSpeed, which r1kit runs on CUDA GPUs only (ZeRO-3 "
            "is untested on CPU); launch with recipes/accelerate/fsdp2.yaml (FSDP2 runs on CPU), or on GPUs"
        )
    if req.strategy == "FSDP" and req.fsdp_version != 2:
        raise ConfigError(
            f"training.device: cpu with fsdp_version {req.fsdp_version}: r1kit shards CPU runs with FSDP2 only; set "
            "fsdp_version: 2 in the accelerate configuration (recipes/accelerate/fsdp2.yaml)"
        )


def shard(model: torch.nn.Module, req: Requested, *, world_size: int, mixed_precision: str) -> torch.nn.Module:
    """``fully_shard`` every decoder layer, then the root, over all processes (in place; returns ``model``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    classes = set(req.layer_classes) or _no_split_modules(model)
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    if not layers:
        raise ConfigError(
            f"fsdp_transformer_layer_cls_to_wrap: no module of {sorted(classes)} in {type(model).__name__}; name the "
            "model's decoder layer class in the accelerate configuration"
        )
    # bf16 autocast as accelerate's FSDP2 does it: float32 parameters and gradient reduction, bf16 compute.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16) if mixed_precision == "bf16" else MixedPrecisionPolicy()
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=req.reshard_after_forward, mp_policy=policy)
    # The root (embeddings, final norm, LM head) stays gathered from its forward through backward: r1kit projects
    # the LM head after the model's forward returns and again in backward (rl.lm_head's chunks), on its weights.
    # (Under accelerate's FSDP2 on GPUs, Dist.prepare sets the same on the root it wraps.)
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    return model


def _no_split_modules(model: torch.nn.Module) -> set[str]:
    from transformers import PreTrainedModel

    found: set[str] = set()
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            found.update(m._no_split_modules or [])
    return found


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight gathered into a full CPU tensor on process 0 ({} elsewhere); every process must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


_TRAINABLE = {"ignore_frozen_params": True}  # a LoRA run's shards: the adapters; the base is the pretrained one


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Each process writes its shards of the trainable weights and the optimizer state under ``path`` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(**_TRAINABLE))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Read back what ``save_sharded`` wrote, into this process's shards (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    options = StateDictOptions(**_TRAINABLE, strict=False)  # the frozen base is not in the checkpoint
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options)


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """The gradient norm ``clip_grad_norm_`` returns over DTensor gradients, as a plain tensor."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
