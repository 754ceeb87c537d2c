"""Router control for one training step: record routing, replay it, and measure it, from the routing data the
training forward returns (``rl.forward.PolicyForward``, ``rl.moe.capture.Routing``). Nothing here hooks the model.

Per step the trainer calls::

    begin_step(attention_mask_BL)            the step's full padded batch (B rows)
    record(rows, routing)                    after each no-grad old-policy forward (micro-batch ``rows``)
    replay_for(rows) -> experts or None      what to hand in to a training forward (routing replay)
    observe(rows, routing)                   after each training forward
    loss, m = add_aux_loss(loss, m, routing) after the policy loss of that forward
    end_step() -> metrics

**Recording**: each MoE layer's experts per (row, position) of the old-policy forward.
**Replay** (``routing_replay``): the training forward is handed the recorded experts for its rows; the gate
weights are recomputed from the *live* router logits at those experts (``rl.moe.capture``).

Telemetry definitions (all over real tokens - prompt and completion, padding excluded, a packed prompt counted once
per row that holds it - and MoE layers):

``moe/flip_rate``
    Over every training forward of the step (each micro-batch of each mini-batch of each of the
    ``num_iterations`` passes): the share of (token, layer) pairs whose *used* top-k expert set differs from the
    set recorded for that token in the old-policy forward. The first mini-batch of the first pass sees the weights
    the recording saw, so its flips are near-tie numerical noise; later mini-batches see updated weights. With
    replay the used set *is* the recorded one, so the rate is exactly 0. Logged only when an old-policy forward
    ran (off-policy updates, or replay); a single on-policy update has nothing to flip against.
``moe/replay_override_rate``
    With replay: the same comparison with the live router's *own* choice - the flips replay prevented.
``moe/expert_load``, ``moe/load_max_over_mean``, ``moe/load_entropy/layer_{i}``
    Expert assignment counts of the step's first full pass: the old-policy forward when it ran, otherwise the
    training forwards. ``expert_load`` is a list (MoE layers, in ``moe/expert_load_layers`` order) of per-expert
    shares summing to 1; max/mean is averaged over layers; entropy is normalised by log E (1 = uniform).
``moe/aux_loss``
    The load-balancing loss of the training forwards (mean over layers), when ``router_aux_loss_coef > 0``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from rl.moe.capture import Routing
from rl.moe.metrics import expert_counts, flip_counts, load_balancing_loss, load_entropy, load_max_over_mean
from rl.moe.routers import RouterSite, find_routers, require_families

log = logging.getLogger(__name__)
PHASES = ("record", "train")


class RouterControl:
    def __init__(
        self, sites: list[RouterSite], *, replay: bool = False, aux_loss_coef: float = 0.0, telemetry: bool = True
    ) -> None:
        self.sites, self.replay, self.aux_loss_coef, self.telemetry = sites, replay, aux_loss_coef, telemetry
        self.wants_routing = bool(sites) and (replay or aux_loss_coef > 0 or telemetry)
        """Whether training forwards should return router outputs (``PolicyForward(..., routing=True)``)."""
        self._mask_BL: torch.Tensor | None = None
        self._recorded: dict[int, torch.Tensor] = {}  # layer -> experts_BLK of the old-policy forward
        self._reset_stats()

    @property
    def needs_old_forward(self) -> bool:
        """Replay needs the recording forward even when the update is on-policy (the trainer would skip it)."""
        return self.replay and bool(self.sites)

    # ------------------------------------------------------------ step API
    def begin_step(self, attention_mask_BL: torch.Tensor) -> None:
        self._mask_BL = attention_mask_BL
        self._recorded = {}
        self._reset_stats()

    def record(self, rows: torch.Tensor, routing: Routing | None) -> None:
        """Store the experts of an old-policy forward over ``rows`` of the step's batch."""
        if routing is None:
            return
        B, L = self._step_mask().shape
        for layer in routing.layers:
            experts_bLK = routing.experts_BLK(layer)
            store = self._recorded.get(layer)
            if store is None:
                shape = (B, L, experts_bLK.shape[-1])
                store = self._recorded[layer] = torch.zeros(shape, dtype=torch.int32, device=experts_bLK.device)
            store[rows.to(store.device)] = experts_bLK
            self._count("record", layer, experts_bLK[routing.tokens.mask_BL], routing)

    def replay_for(self, rows: torch.Tensor) -> dict[int, torch.Tensor] | None:
        """The recorded experts of ``rows``, per layer, to hand to a training forward (None without replay)."""
        if not (self.replay and self.sites):
            return None
        missing = [s.name for s in self.sites if s.layer not in self._recorded]
        if missing:
            raise RuntimeError(f"replay: no recording for {missing[0]}; run the old-policy forward first")
        return {layer: e[rows.to(e.device)] for layer, e in self._recorded.items()}

    def observe(self, rows: torch.Tensor, routing: Routing | None) -> None:
        """Flip rates and expert counts of a training forward over ``rows``."""
        if routing is None or not self.telemetry:
            return
        for layer in routing.layers:
            natural_MK, used_MK = routing.real_experts(layer)
            if layer in self._recorded:
                # the forward's real (row, position) pairs, in the order real_experts gives them
                recorded_MK = self._recorded[layer][rows.to(used_MK.device)][routing.tokens.mask_BL]
                all_M = torch.ones(used_MK.shape[0], dtype=torch.bool, device=used_MK.device)
                flips, n = flip_counts(recorded_MK, used_MK, all_M)
                self._flips, self._compared = self._flips + flips, self._compared + n
                if self.replay:
                    self._overrides += flip_counts(used_MK, natural_MK, all_M)[0]
            self._count("train", layer, used_MK, routing)

    def add_aux_loss(
        self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], routing: Routing | None
    ) -> tuple[torch.Tensor, dict]:
        """``loss + coef * mean_layers(load-balancing loss)`` of a training forward's routing."""
        if self.aux_loss_coef <= 0 or routing is None or not routing.layers:
            return loss, metrics
        families = {s.layer: s.family for s in self.sites}
        terms = []
        for layer in routing.layers:
            real = routing.real(layer)
            ones_M = torch.ones(real.used_NK.shape[0], device=real.used_NK.device)
            terms.append(load_balancing_loss(families[layer].probs(real.logits_NE), real.used_NK, ones_M))
        aux = torch.stack(terms).mean()
        return loss + self.aux_loss_coef * aux.to(loss.dtype), {**metrics, "moe/aux_loss": aux.detach()}

    def end_step(self) -> dict[str, Any]:
        self._recorded = {}
        if not self.wants_routing or not self.telemetry:
            return {}
        out: dict[str, Any] = {}
        if self._compared:
            out["moe/flip_rate"] = self._flips / self._compared
            if self.replay:
                out["moe/replay_override_rate"] = self._overrides / self._compared
        counts = self._counts["record"] or self._counts["train"]
        if counts:
            layers = sorted(counts)
            out["moe/load_max_over_mean"] = sum(load_max_over_mean(counts[i]) for i in layers) / len(layers)
            for i in layers:
                out[f"moe/load_entropy/layer_{i}"] = load_entropy(counts[i])
            out["moe/expert_load"] = [(counts[i] / counts[i].sum().clamp(min=1)).tolist() for i in layers]
            out["moe/expert_load_layers"] = layers
        return out

    # ------------------------------------------------------------- internals
    def _step_mask(self) -> torch.Tensor:
        if self._mask_BL is None:
            raise RuntimeError("RouterControl: call begin_step with the step's attention mask first")
        return self._mask_BL

    def _reset_stats(self) -> None:
        self._flips = self._overrides = self._compared = 0
        self._counts: dict[str, dict[int, torch.Tensor]] = {p: {} for p in PHASES}

    def _count(self, phase: str, layer: int, used_MK: torch.Tensor, routing: Routing) -> None:
        """Add the experts used at the forward's real tokens (``used_MK``) to ``phase``'s counts of ``layer``."""
        if not self.telemetry:
            return
        all_M = torch.ones(used_MK.shape[0], dtype=torch.bool, device=used_MK.device)
        c = expert_counts(used_MK, all_M, routing.layers[layer].logits_NE.shape[-1]).cpu()
        prev = self._counts[phase].get(layer)
        self._counts[phase][layer] = c if prev is None else prev + c


def attach_router_control(model: torch.nn.Module, cfg) -> RouterControl:
    """Find the routers of ``model`` (peft-wrapped or not) and hook them as ``cfg`` (``MoEConfig``) asks."""
    sites = find_routers(model)
    wants = [
        k
        for k, on in (
            ("routing_replay", cfg.routing_replay),
            ("freeze_router", cfg.freeze_router),
            ("router_aux_loss_coef", cfg.router_aux_loss_coef > 0),
        )
        if on
    ]
    if not sites:
        if wants:
            raise ValueError(f"moe.{wants[0]}: {type(model).__name__} has no MoE routers (is it a dense model?)")
        return RouterControl([])
    if cfg.routing_replay:
        require_families(sites, "moe.routing_replay")
    if cfg.router_aux_loss_coef > 0:
        require_families(sites, "moe.router_aux_loss_coef")
    if cfg.freeze_router:
        n = freeze_routers(sites)
        log.info("moe.freeze_router: %d router parameters frozen", n)
    layers = [s.layer for s in sites]
    log.info("MoE routers: %d layers %s, %s", len(sites), layers, sorted({s.class_name for s in sites}))
    return RouterControl(
        sites, replay=cfg.routing_replay, aux_loss_coef=cfg.router_aux_loss_coef, telemetry=cfg.telemetry
    )


def freeze_routers(sites: list[RouterSite]) -> int:
    """``requires_grad = False`` on every router parameter; returns how many elements were frozen."""
    n = 0
    for s in sites:
        for p in s.module.parameters():
            n += p.numel() if p.requires_grad else 0
            p.requires_grad_(False)
    return n
