"""Optimizers by name (``training.optimizer``).

``adamw_8bit`` keeps AdamW's two moment estimates in 8 bits (bitsandbytes, Dettmers et al. 2022): ~75% less
optimizer memory, which is what full fine-tuning of a MoE runs out of first. bitsandbytes is imported only when
asked for, so the default install does not need it.

Master weights. bf16 holds 8 significant bits: neighbouring values are 2^-8 to 2^-7 of a weight's magnitude apart,
and an update under half of that rounds back to the old value. AdamW moves a weight by about lr per step, so at
lr 1e-6 (typical for RL on large models) nearly every update of a bf16 full fine-tune would vanish.
``make_optimizer`` therefore wraps the optimizer in ``MasterWeights`` whenever a trainable parameter is bf16 or
fp16: the model keeps its low-precision weights (generation and forwards run as before), the named optimizer steps
float32 copies, and each step writes the copies back rounded. Cost: 4 bytes per trainable parameter for the copies,
plus a transient float32 copy of the gradients during ``step``. float32 parameters (the default ``model.dtype``, and
LoRA adapters, which peft keeps in float32 over a bf16 base) get the plain optimizer. Sharded runs (FSDP,
DeepSpeed) get the plain optimizer too: their engine owns the parameters and mixed precision (see
``make_optimizer``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch

from core.configio import ConfigError
from core.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
LOW_PRECISION = (torch.bfloat16, torch.float16)
"""Parameter dtypes that get float32 master weights."""


@OPTIMIZERS.register("adamw")
def adamw(params, *, lr: float, betas: Sequence[float], weight_decay: float, device: torch.device):
    # fused: one kernel updates every tensor. On the tiny CPU run clip + step take 1.8 ms fused, 4.3 ms with the
    # per-parameter loop and 6.9 ms with foreach (docs/performance.md); on GPU fused beats foreach too.
    return torch.optim.AdamW(
        params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=device.type in ("cpu", "cuda")
    )


@OPTIMIZERS.register("adamw_8bit")
def adamw_8bit(params, *, lr: float, betas: Sequence[float], weight_decay: float, device: torch.device):
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ConfigError(
            "training.optimizer: adamw_8bit needs bitsandbytes, which is not installed; `pip install bitsandbytes` "
            "(CUDA machines), or use training.optimizer: adamw"
        ) from e
    return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def make_optimizer(name: str, params: Iterable[torch.Tensor], *, sharded: bool = False, **kwargs: Any):
    """The optimizer ``training.optimizer`` names, over float32 master weights when a parameter is bf16 / fp16.

    ``sharded`` (FSDP, DeepSpeed): always the plain optimizer. accelerate swaps the optimizer's parameters for the
    sharded ones at ``prepare``, which needs them to be the model's own; and the engines keep float32 masters
    themselves: FSDP2 upcasts trainable parameters to float32 whenever ``training.mixed_precision`` is not ``no``
    (accelerate's ``fsdp2_prepare_model``; bf16 then is only the compute dtype), DeepSpeed's bf16 mode keeps an
    fp32 copy in its optimizer."""
    params = list(params)
    build = OPTIMIZERS.get(name)
    if sharded or not any(p.dtype in LOW_PRECISION for p in params):
        return build(params, **kwargs)
    return MasterWeights(params, partial(build, **kwargs))


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


class MasterWeights(torch.optim.Optimizer):
    """``inner`` (built by ``build`` from param groups) steps float32 copies of the low-precision parameters.

    The param groups seen from outside (accelerate, gradient clipping, GradScaler, the LR scheduler) hold the
    model's own parameters, so gradients, ``zero_grad`` and loss-scale unscaling work on them as usual. ``step``
    copies the groups' hyperparameters (the ``lr`` the scheduler moved) into the inner groups, casts each gradient
    into its master, steps the inner optimizer and rounds the masters back into the parameters. float32 (or wider)
    parameters in the same groups are stepped in place: their "master" is the parameter itself.

    ``state_dict`` holds the inner optimizer's state and the masters, so a resumed run continues from the float32
    values, not from the rounded weights (rounding them again would lose every sub-spacing update so far).
    """

    def __init__(self, params, build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]) -> None:
        self.masters: list[list[torch.Tensor]] = []  # per param group, aligned with its "params"
        self.inner: torch.optim.Optimizer | None = None
        super().__init__(params, defaults={})  # calls add_param_group for each group
        groups = [{**g, "params": m} for g, m in zip(self.param_groups, self.masters, strict=True)]
        self.inner = build(groups)
        for group, inner_group in zip(self.param_groups, self.inner.param_groups, strict=True):
            group.update(_hyper(inner_group))  # the inner's defaults (lr, betas, ...), where the scheduler moves them

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        masters = [p.detach().float() if p.dtype in LOW_PRECISION else p.detach() for p in group["params"]]
        self.masters.append(masters)
        if self.inner is not None:  # a group added after construction
            self.inner.add_param_group({**group, "params": masters})
            group.update(_hyper(self.inner.param_groups[-1]))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pairs = []
        for group, inner_group, masters in zip(self.param_groups, self.inner.param_groups, self.masters, strict=True):
            inner_group.update(_hyper(group))
            for p, m in zip(group["params"], masters, strict=True):
                m.grad = None if p.grad is None else p.grad.to(m.dtype)
                pairs.append((p, m))
        self.inner.step()
        for p, m in pairs:
            if m.grad is not None and m.dtype != p.dtype:
                p.copy_(m)  # round to nearest: the parameter is the master's closest bf16 / fp16 value
            m.grad = None  # the float32 gradient copies are not kept between steps
        return loss

    def state_dict(self) -> dict[str, Any]:
        """torch's layout for the outer groups (their ``lr`` is the scheduler's), plus ``inner`` and ``masters``."""
        masters = [m for group in self.masters for m in group]
        return {**super().state_dict(), "inner": self.inner.state_dict(), "masters": masters}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        if "masters" not in state_dict:  # a plain optimizer's state (a run started before master weights)
            self.inner.load_state_dict(state_dict)
            saved = [p.detach() for group in self.param_groups for p in group["params"]]
        else:
            self.inner.load_state_dict(state_dict["inner"])
            saved = state_dict["masters"]
        with torch.no_grad():
            for m, s in zip([m for group in self.masters for m in group], saved, strict=True):
                m.copy_(s)
