"""Router outputs of one training-side forward, as data: what each MoE layer's router computed and which experts
the layer used, mapped back to the batch's padded (row, position) coordinates whatever layout the forward ran in.

``capture_routing`` hooks the routers for the duration of one forward (and its backward, where gradient
checkpointing re-runs layers) and for nothing else: generation, evaluation and the reference forward never see a
hook. It can also *hand in* experts (routing replay): each router's choice is replaced by the given experts, and
the gate weights are recomputed from the live logits with the family's normalisation (``rl.moe.routers``), so the
experts are the old policy's while the router still learns.

A forward's tokens are a flat list of N router inputs: B x L for the padded layout, the packed row's real tokens
for the packed one (``rl.logprobs.Packing``). A ``TokenMap`` says where each (row, position) went.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rl.moe.routers import RouterSite


@dataclass(frozen=True)
class TokenMap:
    """``index_BL``: the flat router-input index of each (row, position), N at padding; ``source_N``: one (row,
    position), flattened as ``b * L + l``, for each router input (a packed prompt token stands for its G rows)."""

    index_BL: torch.Tensor
    source_N: torch.Tensor

    @property
    def mask_BL(self) -> torch.Tensor:
        return self.index_BL < self.source_N.numel()

    @classmethod
    def padded(cls, attention_mask_BL: torch.Tensor) -> TokenMap:
        """Every (row, position) is its own router input; padding positions run through the router too but are
        masked out of everything computed from them.

        >>> m = TokenMap.padded(torch.tensor([[0, 1], [1, 1]]))
        >>> m.index_BL.tolist(), m.mask_BL.tolist(), m.source_N.tolist()
        ([[4, 1], [2, 3]], [[False, True], [True, True]], [0, 1, 2, 3])
        """
        B, L = attention_mask_BL.shape
        flat_BL = torch.arange(B * L, device=attention_mask_BL.device).view(B, L)
        return cls(torch.where(attention_mask_BL.bool(), flat_BL, B * L), flat_BL.reshape(-1))


@dataclass(frozen=True)
class LayerRouting:
    """One MoE layer's router over the forward's N inputs."""

    logits_NE: torch.Tensor
    """The live router logits (part of the autograd graph when the forward is)."""
    natural_NK: torch.Tensor
    """The experts the router itself chose."""
    used_NK: torch.Tensor
    """The experts the layer ran: ``natural_NK``, or the replayed ones."""


@dataclass(frozen=True)
class Routing:
    """Every MoE layer's routing of one forward, and the map back to (row, position)."""

    layers: dict[int, LayerRouting]
    tokens: TokenMap

    def experts_BLK(self, layer: int) -> torch.Tensor:
        """The experts layer ``layer`` used at each (row, position), int32, 0 at padding."""
        used_NK = self.layers[layer].used_NK
        with_pad_NK = torch.cat([used_NK, used_NK.new_zeros(1, used_NK.shape[-1])])
        return with_pad_NK[self.tokens.index_BL].to(torch.int32)

    def real_experts(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(natural_MK, used_MK) of layer ``layer`` over the real (row, position) pairs, as ``real`` orders them;
        no logits are gathered (telemetry needs none, and gathering them adds to the autograd graph)."""
        r, idx_M = self.layers[layer], self.tokens.index_BL[self.tokens.mask_BL]
        return r.natural_NK[idx_M], r.used_NK[idx_M]

    def real(self, layer: int) -> LayerRouting:
        """Layer ``layer`` over the batch's real (row, position) pairs in row-major order (M of them): a packed
        prompt token counts once per row that holds it, exactly as in the padded forward."""
        r, idx_M = self.layers[layer], self.tokens.index_BL[self.tokens.mask_BL]
        return LayerRouting(r.logits_NE[idx_M], r.natural_NK[idx_M], r.used_NK[idx_M])


@contextlib.contextmanager
def capture_routing(
    sites: list[RouterSite], tokens: TokenMap, *, replay_BLK: dict[int, torch.Tensor] | None = None
) -> Iterator[Routing]:
    """Hook every router in ``sites`` while inside; the yielded ``Routing`` fills in as the forward runs.

    ``replay_BLK``: per layer, the experts (B, L, K) to hand in at each of the forward's (row, position) pairs.
    A layer run twice (gradient checkpointing re-runs it in backward) replays the same experts and is recorded
    once."""
    layers: dict[int, LayerRouting] = {}
    replay_NK = {layer: e.reshape(-1, e.shape[-1])[tokens.source_N] for layer, e in (replay_BLK or {}).items()}
    handles = [
        s.module.register_forward_hook(functools.partial(_hook, s, layers, replay_NK.get(s.layer))) for s in sites
    ]
    try:
        yield Routing(layers, tokens)
    finally:
        for h in handles:
            h.remove()


def _hook(site: RouterSite, layers: dict, replay_NK, module: torch.nn.Module, args: Any, output: Any) -> Any:
    logits_NE, weights_NK, natural_NK = unpack_router_output(site, output)
    used_NK, new_output = natural_NK, None
    if replay_NK is not None:
        if replay_NK.shape[0] != natural_NK.shape[0]:
            n, m = natural_NK.shape[0], replay_NK.shape[0]
            raise RuntimeError(f"replay: {site.name} saw {n} tokens; the experts handed in cover {m}")
        used_NK = replay_NK.to(natural_NK.device, natural_NK.dtype)
        weights = site.family.weights(module, logits_NE, used_NK).to(weights_NK.dtype)
        new_output = (logits_NE, weights, used_NK)
    layers.setdefault(site.layer, LayerRouting(logits_NE, natural_NK, used_NK))
    return new_output


def unpack_router_output(site: RouterSite, output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ok = isinstance(output, tuple) and len(output) == 3 and not output[2].is_floating_point()
    if not ok:
        raise TypeError(
            f"router {site.name} ({site.class_name}) does not return (router_logits, topk_weights, topk_indices) "
            "as transformers >= 5 routers do; set moe.telemetry: false (replay and aux loss need it too)"
        )
    return output
