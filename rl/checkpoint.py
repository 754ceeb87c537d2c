"""Atomic checkpoints: everything a resumed run needs to continue exactly as the uninterrupted run would.

A checkpoint is a directory ``checkpoints/step-000050`` holding the trainable weights (safetensors), optimizer and
scheduler state, one RNG-state file per process (``rng-rank{r}.pt``) and the trainer state (step, data position,
base accuracy). It is written into a
temporary sibling, fsynced, and renamed into place: a SIGKILL at any moment leaves either the complete new
checkpoint or none, and the previous one untouched.

Sharded runs. r1kit's own FSDP2 (CPU processes, ``rl.fsdp``) writes ``dcp/`` with ``torch.distributed.checkpoint``:
each process its shards of the trainable weights and of the optimizer state, no gather, and reads them back the
same way (``save_sharded`` / ``load_sharded``). Under accelerate's FSDP / ZeRO-3 (GPUs) the weights are gathered
into full tensors before saving (``Dist.full_state_dict``) and each process writes its own optimizer shard. For
one process and DDP the weights are whole anyway and a single safetensors file is what people load elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d{6,})$")


def trainable_state(model: torch.nn.Module, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The trainable parameters, from the model or, when given, from ``full`` (a state dict gathered from shards)."""
    if full is not None:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        return {n: t.detach().cpu().contiguous() for n, t in full.items() if n in names}
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    keep: int = 2,
    *,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
    full_state: dict[str, torch.Tensor] | None = None,
    optimizer_per_rank: bool = False,
    save_sharded: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``root/step-NNNNNN`` atomically. With several processes every one calls this (``barrier`` syncs them):
    each writes its RNG state ``rng-rank{r}.pt``; rank 0 writes the rest (DDP keeps weights and optimizer state
    identical on every process) and renames the directory into place. Sharded runs (FSDP / ZeRO-3) pass the
    gathered ``full_state`` and write each process's optimizer shard (``optimizer_per_rank``), or, with
    ``save_sharded`` (a collective), each process's shards of weights and optimizer state into ``dcp/``."""
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp-shared"  # a fixed name: every process writes its RNG state into it
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    _fsync_file(tmp / f"rng-rank{rank}.pt")
    if save_sharded is not None:
        save_sharded(tmp / "dcp")
        for f in (tmp / "dcp").iterdir():
            _fsync_file(f)
    elif optimizer_per_rank:
        torch.save(optimizer.state_dict(), tmp / f"optim-rank{rank}.pt")
        _fsync_file(tmp / f"optim-rank{rank}.pt")
    barrier()
    if rank == 0:
        written = ["optim.pt", "trainer_state.json"]
        if save_sharded is None:
            save_file(trainable_state(model, full_state), str(tmp / "trainable.safetensors"))
            written.append("trainable.safetensors")
        optim = {} if optimizer_per_rank else {"optimizer": optimizer.state_dict()}
        torch.save({**optim, "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
        for f in written:
            _fsync_file(tmp / f)
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step after a resume: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        prune(root, keep)
    barrier()
    return final


def _load_weights(path: Path, model: torch.nn.Module) -> None:
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _remove(path: Path) -> None:
    """Rename out of sight first, then delete: a kill mid-delete must not leave a half-empty ``step-*`` visible."""
    doomed = path.with_name(f".{path.name}.tmp-delete")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune(root: Path, keep: int) -> None:
    for p in list_checkpoints(root)[:-keep]:
        _remove(p)
    for p in root.glob(".step-*.tmp-*"):  # leftovers of a write that was killed
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    *,
    rank: int = 0,
    load_sharded: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG states; return the trainer state.
    ``load_sharded``: a sharded run's reader of ``dcp/`` (a collective)."""
    sharded = (path / "dcp").is_dir()
    if sharded != (load_sharded is not None):
        raise ValueError(
            f"checkpoint {path} was written by a {'sharded (FSDP2)' if sharded else 'DDP / one-process'} run; "
            "resume it the same way (the same accelerate configuration)"
        )
    blob = torch.load(path / "optim.pt", weights_only=False)
    if load_sharded is not None:  # weights and optimizer state, each process its shards
        load_sharded(path / "dcp")
    else:
        _load_weights(path, model)
        shard = path / f"optim-rank{rank}.pt"
        optimizer.load_state_dict(torch.load(shard, weights_only=False) if shard.is_file() else blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    elif "rng" in blob:  # checkpoints written before per-process RNG files
        set_rng_state(blob["rng"])
    else:
        log.warning(
            "checkpoint %s has no RNG state for process %d (saved with fewer processes): sampling will "
            "not repeat the uninterrupted run",
            path,
            rank,
        )
    return json.loads((path / "trainer_state.json").read_text())
