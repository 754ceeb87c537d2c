"""The one place where training-side forwards run: the policy's gradient forward, the old policy's and the
reference's no-grad forwards.

``PolicyForward`` chooses the layout (``rl.logprobs``: packed, shared prompts or padded), returns the completion
log-probabilities and, when asked, the routers' outputs as data (``rl.moe.capture.Routing``, mapped back to the
batch's (row, position) coordinates through the packing). Router telemetry, the load-balancing loss and routing
replay consume that data or hand experts in (``rl.moe.control``); nothing else hooks the model, and nothing
forces a layout from outside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from core.registry import Registry
from rl.logprobs import (
    PACKED,
    attention_implementation,
    can_pack,
    pack,
    packed_logprobs,
    padded_logprobs,
    shared_prompt_logprobs,
)
from rl.moe.capture import Routing, TokenMap, capture_routing
from rl.moe.routers import RouterSite
from rollouts.records import SequenceTensors

LAYOUTS: Registry[Callable[[SequenceTensors], Prepared]] = Registry("forward layout")


@dataclass(frozen=True)
class Prepared:
    """A batch laid out for one forward: where its tokens go (for router outputs) and the forward itself."""

    tokens: TokenMap
    logprobs: Callable[[torch.nn.Module, float, bool], tuple]  # (model, temperature, entropy) -> (logp_BT, ent_BT)
    one_pass: bool = True
    """Each router sees the forward's tokens in one call (what capturing router outputs needs)."""
    held: Callable[[torch.nn.Module], contextlib.AbstractContextManager] = lambda model: contextlib.nullcontext()
    """What must stay set from the forward through ``backward()``: activation checkpointing re-runs layers there."""


@LAYOUTS.register("packed")
def _packed(seq: SequenceTensors) -> Prepared:
    """Real tokens only, one row (``rl.logprobs.packed_logprobs``)."""
    packing = pack(seq)
    return Prepared(
        packing.tokens,
        lambda m, t, e: packed_logprobs(m, seq, temperature=t, packing=packing, entropy=e),
        # Layers re-run under activation checkpointing read the attention implementation from the config again (the
        # packing itself travels in their saved keyword arguments): it stays the packed one until backward is done.
        held=lambda model: attention_implementation(model, PACKED),
    )


@LAYOUTS.register("shared")
def _shared(seq: SequenceTensors) -> Prepared:
    """Each distinct prompt once, completions attending to its KV cache; the padded forward when no prompt
    repeats. Two passes per layer: never used when router outputs are wanted."""

    def run(model: torch.nn.Module, t: float, e: bool) -> tuple:
        shared = shared_prompt_logprobs(model, seq, temperature=t, entropy=e)
        return shared if shared is not None else padded_logprobs(model, seq, temperature=t, entropy=e)

    return Prepared(TokenMap.padded(seq.attention_mask_BL), run, one_pass=False)


@LAYOUTS.register("padded")
def _padded(seq: SequenceTensors) -> Prepared:
    """Every row's prompt and completion, padded: the reference."""
    run = lambda m, t, e: padded_logprobs(m, seq, temperature=t, entropy=e)  # noqa: E731
    return Prepared(TokenMap.padded(seq.attention_mask_BL), run)


@dataclass(frozen=True)
class ForwardOut:
    logp_BT: torch.Tensor
    """Log-probabilities of the completion tokens, 0 at padding."""
    routing: Routing | None
    """Every MoE layer's routing (None unless asked for)."""
    layout: str
    """The layout that ran (a ``LAYOUTS`` name)."""
    entropy_BT: torch.Tensor | None = None
    """Per-token entropy of the sampling distribution (no gradient; 0 at padding), when asked for."""


class PolicyForward:
    """Log-probabilities (and router outputs) of a batch under a model, in the fastest layout that computes the same
    thing.

    ``single_forward``: the model is wrapped by DDP/FSDP, which expect one forward per backward; the shared-prompt
    layout runs two. The packed layout runs one, and is taken there too.
    """

    def __init__(self, sites: list[RouterSite], *, temperature: float, single_forward: bool = False) -> None:
        self.sites, self.temperature, self.single_forward = sites, temperature, single_forward

    def layout(self, model: torch.nn.Module, *, routing: bool) -> str:
        """``packed`` where the model allows it (one forward: also under DDP/FSDP and activation checkpointing);
        else ``shared`` (each prompt once, attending to its KV cache), except when router outputs are wanted (its two
        passes split each layer's tokens), under DDP/FSDP (two forwards per backward) or activation checkpointing
        (checkpointed layers turn the KV cache off); else ``padded``."""
        if can_pack(model):
            return "packed"
        checkpointing = any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
        return "padded" if routing or self.single_forward or checkpointing else "shared"

    @contextlib.contextmanager
    def __call__(
        self,
        model: torch.nn.Module,
        seq: SequenceTensors,
        *,
        routing: bool = False,
        replay_BLK: dict[int, torch.Tensor] | None = None,
        layout: str | None = None,
        entropy: bool = False,
    ) -> Iterator[ForwardOut]:
        """Run the forward on entering; stay inside through ``backward()`` (routers re-run under gradient
        checkpointing replay the same experts). ``replay_BLK`` hands in each MoE layer's experts at every (row,
        position) of ``seq``. ``layout``: a ``LAYOUTS`` name instead of the choice of ``self.layout`` (the
        reference-vs-fast tests run ``padded``). ``entropy``: also each token's entropy (a logged statistic)."""
        routing = routing or replay_BLK is not None
        layout = layout or self.layout(model, routing=routing and bool(self.sites))
        prepared = LAYOUTS.get(layout)(seq)
        if routing and self.sites and not prepared.one_pass:
            raise ValueError(f"PolicyForward: the {layout} layout runs each router twice; router outputs need one")
        capture = (
            capture_routing(self.sites, prepared.tokens, replay_BLK=replay_BLK)
            if routing and self.sites
            else contextlib.nullcontext()
        )
        with capture as captured, prepared.held(model):
            logp_BT, entropy_BT = prepared.logprobs(model, self.temperature, entropy)
            yield ForwardOut(logp_BT, captured, layout, entropy_BT)
