"""MoE router families: how each transformers router turns logits into gate weights, and where routers live.

transformers >= 5 gives every MoE block a router module (``block.gate``) returning
``(router_logits_NE, topk_weights_NK, topk_indices_NK)`` over the block's N = batch * sequence tokens. Routing
replay keeps a family's *weights* live (so the router still learns) but forces its *indices*; that needs the
family's own normalisation, registered here by router class name::

    softmax top-k       Qwen2-MoE, Qwen3-MoE, OLMoE (``norm_topk_prob`` from the config), Mixtral (always norm)
    sigmoid, grouped    DeepSeek-V3: choice uses ``sigmoid + e_score_correction_bias`` within the best groups, but
                        the weights are the bias-free sigmoid scores, normalised (``norm_topk_prob``), times
                        ``routed_scaling_factor``

A router class not registered here still gets telemetry (it only reads the output tuple); replay and the
aux loss raise naming the class.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from core.registry import Registry


def softmax_topk_weights(logits_NE: torch.Tensor, idx_NK: torch.Tensor, *, norm_topk_prob: bool) -> torch.Tensor:
    """``softmax(logits)[idx]``, renormalised over the K chosen experts when ``norm_topk_prob``.

    >>> logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> softmax_topk_weights(logits, torch.tensor([[2, 0]]), norm_topk_prob=False)
    tensor([[0.2000, 0.5000]])
    >>> softmax_topk_weights(logits, torch.tensor([[2, 0]]), norm_topk_prob=True)  # 0.2/0.7, 0.5/0.7
    tensor([[0.2857, 0.7143]])
    """
    w_NK = torch.softmax(logits_NE.float(), dim=-1).gather(-1, idx_NK)
    return w_NK / w_NK.sum(-1, keepdim=True) if norm_topk_prob else w_NK


def sigmoid_topk_weights(
    logits_NE: torch.Tensor, idx_NK: torch.Tensor, *, norm_topk_prob: bool, routed_scaling_factor: float
) -> torch.Tensor:
    """DeepSeek-V3 gate weights (V3 report eq. 13-15): bias-free ``sigmoid(logits)[idx]``, normalised, scaled.

    >>> logits = torch.logit(torch.tensor([[0.9, 0.6, 0.3]]))
    >>> sigmoid_topk_weights(logits, torch.tensor([[0, 2]]), norm_topk_prob=True, routed_scaling_factor=2.0)
    tensor([[1.5000, 0.5000]])
    """
    w_NK = logits_NE.float().sigmoid().gather(-1, idx_NK)
    if norm_topk_prob:
        w_NK = w_NK / (w_NK.sum(-1, keepdim=True) + 1e-20)  # the 1e-20 is transformers'
    return w_NK * routed_scaling_factor


def softmax_probs(logits_NE: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits_NE.float(), dim=-1)


def normalised_sigmoid_probs(logits_NE: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's balance-loss affinities (eq. 18): sigmoid scores normalised over all experts."""
    s_NE = logits_NE.float().sigmoid()
    return s_NE / s_NE.sum(-1, keepdim=True)


@dataclass(frozen=True)
class RouterFamily:
    name: str
    weights: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    """(router module, logits_NE, idx_NK) -> weights_NK, exactly as the router computes them for its own choice."""
    probs: Callable[[torch.Tensor], torch.Tensor]
    """logits_NE -> per-expert probabilities_NE for the load-balancing loss."""


ROUTER_FAMILIES: Registry[RouterFamily] = Registry("MoE router class")


def _softmax_family(name: str, *, always_norm: bool = False) -> RouterFamily:
    def weights(router, logits_NE, idx_NK):
        return softmax_topk_weights(logits_NE, idx_NK, norm_topk_prob=always_norm or bool(router.norm_topk_prob))

    return RouterFamily(name, weights, softmax_probs)


def _deepseek_weights(router, logits_NE, idx_NK):
    return sigmoid_topk_weights(
        logits_NE,
        idx_NK,
        norm_topk_prob=bool(router.norm_topk_prob),
        routed_scaling_factor=float(router.routed_scaling_factor),
    )


# Router class name -> family (values, not functions: registered with add, one line each)
ROUTER_FAMILIES.add("Qwen2MoeTopKRouter", _softmax_family("qwen2_moe"))
ROUTER_FAMILIES.add("Qwen3MoeTopKRouter", _softmax_family("qwen3_moe"))
ROUTER_FAMILIES.add("OlmoeTopKRouter", _softmax_family("olmoe"))
ROUTER_FAMILIES.add("MixtralTopKRouter", _softmax_family("mixtral", always_norm=True))
ROUTER_FAMILIES.add("DeepseekV3TopkRouter", RouterFamily("deepseek_v3", _deepseek_weights, normalised_sigmoid_probs))


@dataclass
class RouterSite:
    """One MoE layer's router, found in a (possibly peft-wrapped) model."""

    name: str
    """Module path, e.g. ``base_model.model.model.layers.3.mlp.gate``."""
    layer: int
    """Decoder layer index (parsed from the path): metric keys use it, so dense layers leave gaps."""
    module: torch.nn.Module
    family: RouterFamily | None
    """None for router classes not in ``ROUTER_FAMILIES`` (telemetry only)."""

    @property
    def class_name(self) -> str:
        return type(self.module).__name__


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def find_routers(model: torch.nn.Module) -> list[RouterSite]:
    """Every MoE router: a module whose parent also holds ``experts`` (``block.gate``/``block.router``), or any
    module of a registered router class. Works through peft wrappers (names gain ``base_model.model.``).
    """
    found: dict[int, RouterSite] = {}
    for name, module in _candidates(model):
        if id(module) in found:
            continue
        m = _LAYER.search(name + ".")
        cls = type(module).__name__
        family = ROUTER_FAMILIES.get(cls) if cls in ROUTER_FAMILIES else None
        found[id(module)] = RouterSite(name, int(m.group(1)) if m else len(found), module, family)
    return sorted(found.values(), key=lambda s: s.layer)


def _candidates(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in model.named_modules():
        if type(module).__name__ in ROUTER_FAMILIES:
            yield name, module
        elif getattr(module, "experts", None) is not None:
            for attr in ("gate", "router"):
                child = getattr(module, attr, None)
                if isinstance(child, torch.nn.Module) and not isinstance(child, torch.nn.Linear):
                    yield f"{name}.{attr}" if name else attr, child


def require_families(sites: list[RouterSite], feature: str) -> None:
    """Raise naming the unsupported router classes when ``feature`` needs each family's normalisation."""
    unknown = sorted({s.class_name for s in sites if s.family is None})
    if unknown:
        raise ValueError(
            f"{feature}: router class(es) {unknown} are not supported; supported: {ROUTER_FAMILIES.names()} "
            "(register the family's gate-weight function in rl/moe/routers.py)"
        )
