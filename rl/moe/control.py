"""Router control for one training step: record routing, replay it, and measure it, through forward hooks.

Per step the trainer calls::

    begin_step(attention_mask_BL)            the step's full padded batch (B rows)
    begin_forward("record", rows)            before each no-grad old-policy forward (micro-batch ``rows``)
    begin_forward("train", rows)             before each training forward; stays active through its backward
    loss, m = add_aux_loss(loss, m)          after the policy loss of that forward
    end_step() -> metrics                    and routing goes back to normal (generation, eval, reference)

**Recording**: in every "record" forward each router's top-k indices are stored per (row, position, layer).
**Replay** (``routing_replay``): in "train" forwards each router's indices are replaced by the recorded ones for
the same rows and positions, and the gate weights are recomputed from the *live* router logits at those indices
with the family's normalisation (``rl.moe.routers``): the experts are the old policy's, the router still learns.
Gradient checkpointing re-runs a layer's forward during backward; the second call of a layer within one forward
replays the same indices and is not counted twice.

Telemetry definitions (all over real tokens - prompt and completion, padding excluded - and MoE layers):

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

import functools
import logging
from typing import Any

import torch

from rl.moe.metrics import expert_counts, flip_counts, load_balancing_loss, load_entropy, load_max_over_mean
from rl.moe.routers import RouterSite, find_routers, require_families
from rollouts.fused import IDLE_WHEN_SAMPLING

log = logging.getLogger(__name__)
PHASES = ("record", "train")


def _idle_when_sampling(hook: functools.partial) -> functools.partial:
    """Mark a hook that does nothing outside a training-step phase (sampling has none), so that the fused decode
    step (``rollouts.fused``), which skips the router module's hooks, may run with it registered."""
    setattr(hook, IDLE_WHEN_SAMPLING, True)
    return hook


class RouterControl:
    def __init__(
        self, sites: list[RouterSite], *, replay: bool = False, aux_loss_coef: float = 0.0, telemetry: bool = True
    ) -> None:
        self.sites, self.replay, self.aux_loss_coef, self.telemetry = sites, replay, aux_loss_coef, telemetry
        active = bool(sites) and (replay or aux_loss_coef > 0 or telemetry)
        self._handles = (
            [s.module.register_forward_hook(_idle_when_sampling(functools.partial(self._hook, s))) for s in sites]
            if active
            else []
        )
        self._phase: str | None = None
        self._rows: torch.Tensor | None = None
        self._mask_BL: torch.Tensor | None = None
        self._recorded: dict[int, torch.Tensor] = {}  # layer -> idx_BLK of the old-policy forward
        self._fired: set[int] = set()
        self._aux_terms: list[torch.Tensor] = []
        self._reset_stats()

    @property
    def needs_old_forward(self) -> bool:
        """Replay needs the recording forward even when the update is on-policy (the trainer would skip it)."""
        return self.replay and bool(self._handles)

    @property
    def observing(self) -> bool:
        """Whether the hooks act on the current forward: it must then be one router call per layer over the padded
        (rows, positions) batch, so ``rl.logprobs`` must not split it into a shared-prompt and a completion pass."""
        return self._phase is not None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------ step API
    def begin_step(self, attention_mask_BL: torch.Tensor) -> None:
        self._mask_BL = attention_mask_BL
        self._recorded = {}
        self._reset_stats()
        self._phase = None

    def begin_forward(self, phase: str | None, rows: torch.Tensor | None = None) -> None:
        if phase is not None and phase not in PHASES:
            raise ValueError(f"begin_forward: phase {phase!r} is not one of {PHASES}")
        if phase is not None and (rows is None or self._mask_BL is None):
            raise ValueError("begin_forward: call begin_step first and pass the forward's rows")
        self._phase, self._rows = (phase, torch.as_tensor(rows).cpu()) if phase and self._handles else (None, None)
        self._fired = set()
        self._aux_terms = []

    def add_aux_loss(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """``loss + coef * mean_layers(load-balancing loss)`` of the current training forward."""
        if self.aux_loss_coef <= 0 or not self._aux_terms:
            return loss, metrics
        aux = torch.stack(self._aux_terms).mean()
        return loss + self.aux_loss_coef * aux.to(loss.dtype), {**metrics, "moe/aux_loss": aux.detach()}

    def end_step(self) -> dict[str, Any]:
        self._phase, self._rows, self._recorded, self._aux_terms = None, None, {}, []
        if not self._handles or not self.telemetry:
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

    # --------------------------------------------------------------- hook
    def _reset_stats(self) -> None:
        self._flips = self._overrides = self._compared = 0
        self._counts: dict[str, dict[int, torch.Tensor]] = {p: {} for p in PHASES}

    def _hook(self, site: RouterSite, module: torch.nn.Module, args: Any, output: Any) -> Any:
        if self._phase is None:
            return None
        logits_NE, weights_NK, idx_NK = _unpack(site, output)
        rows = self._rows
        mask_N = self._mask_BL[rows].reshape(-1).to(idx_NK.device)
        if idx_NK.shape[0] != mask_N.numel():
            raise RuntimeError(
                f"router {site.name}: saw {idx_NK.shape[0]} tokens but the forward's rows hold {mask_N.numel()}; "
                "routing control needs one router call per layer over the padded (rows, positions) batch"
            )
        first_call = site.layer not in self._fired  # False when gradient checkpointing re-runs the layer
        self._fired.add(site.layer)
        if self._phase == "record":
            if first_call:
                self._record(site.layer, rows, idx_NK)
                self._count("record", site.layer, idx_NK, mask_N, logits_NE.shape[-1])
            return None
        used_NK, new_output = idx_NK, None
        if self.replay:
            if site.layer not in self._recorded:
                raise RuntimeError(f"replay: no recording for {site.name}; run the old-policy forward first")
            used_NK = self._recorded[site.layer][rows].reshape(idx_NK.shape).to(idx_NK.dtype)
            weights = site.family.weights(module, logits_NE, used_NK).to(weights_NK.dtype)
            new_output = (logits_NE, weights, used_NK)
        if first_call:
            self._observe_train(site, logits_NE, idx_NK, used_NK, mask_N)
        return new_output

    def _record(self, layer: int, rows: torch.Tensor, idx_NK: torch.Tensor) -> None:
        B, L = self._mask_BL.shape
        store = self._recorded.get(layer)
        if store is None:
            K = idx_NK.shape[-1]
            store = self._recorded[layer] = torch.zeros((B, L, K), dtype=torch.int32, device=idx_NK.device)
        store[rows.to(store.device)] = idx_NK.view(len(rows), L, -1).to(torch.int32)

    def _observe_train(self, site, logits_NE, natural_NK, used_NK, mask_N) -> None:
        if self.telemetry:
            if site.layer in self._recorded:
                recorded_NK = self._recorded[site.layer][self._rows].reshape(used_NK.shape)
                flips, n = flip_counts(recorded_NK, used_NK, mask_N)
                self._flips, self._compared = self._flips + flips, self._compared + n
                if self.replay:
                    self._overrides += flip_counts(used_NK, natural_NK, mask_N)[0]
            self._count("train", site.layer, used_NK, mask_N, logits_NE.shape[-1])
        if self.aux_loss_coef > 0 and torch.is_grad_enabled():
            self._aux_terms.append(load_balancing_loss(site.family.probs(logits_NE), used_NK, mask_N))

    def _count(self, phase: str, layer: int, idx_NK, mask_N, num_experts: int) -> None:
        if not self.telemetry:
            return
        c = expert_counts(idx_NK, mask_N, num_experts).cpu()
        prev = self._counts[phase].get(layer)
        self._counts[phase][layer] = c if prev is None else prev + c


def _unpack(site: RouterSite, output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ok = isinstance(output, tuple) and len(output) == 3 and not output[2].is_floating_point()
    if not ok:
        raise TypeError(
            f"router {site.name} ({site.class_name}) does not return (router_logits, topk_weights, topk_indices) "
            "as transformers >= 5 routers do; set moe.telemetry: false (replay and aux loss need it too)"
        )
    return output


def attach_router_control(model: torch.nn.Module, cfg) -> RouterControl:
    """Find the routers of ``model`` (peft-wrapped or not) and hook them as ``cfg`` (``MoEConfig``) asks."""
    sites = find_routers(model)
    wants = [k for k, on in (("routing_replay", cfg.routing_replay), ("freeze_router", cfg.freeze_router),
                             ("router_aux_loss_coef", cfg.router_aux_loss_coef > 0)) if on]  # fmt: skip
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
