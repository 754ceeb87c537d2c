"""Fused decode steps for ``rollouts.sampler``: one new token per live row through the model's own weights and
modules, without the per-call machinery of its ``forward``.

A decode step of a small MoE on a CPU is mostly overhead, not arithmetic: transformers' forward builds a mask,
runs every decoder layer and attention module through ``nn.Module.__call__``, and the ``DynamicCache``
concatenates each layer's keys and values every step (a copy of the whole cache, ~25% of a step at 40 positions
and 32 rows). A fused step computes the same thing as the model's forward for one query token per row:

* keys and values live in preallocated buffers (``KVBuffers``) and a step writes one position in place;
* the decoder layers are unrolled here: norms, projections, rotary embedding, the KV write and the sdpa call
  (as transformers' sdpa attention makes it for one query token) inline; Qwen3-MoE's router and the grouped
  experts operator for operator as transformers computes them, other routers, experts and any LoRA layer through
  their own modules;
* the rotary tables and the decode mask are built once per step, not once per layer.

Results are those of the model's forward: the same arithmetic on the same tensors (tested: equal logits - bit for
bit on the machines we run - and the same tokens as ``model.generate`` under the same seed,
``tests/test_fused_decode.py``, ``tests/test_perf_equivalence.py``). Forward hooks are skipped, so a model with
any hook declines (r1kit's own router capture hooks exist only inside a training forward, ``rl.moe.capture``).
``fused_decoder`` returns None for anything it does not cover - another family, non-sdpa attention, sliding
windows, foreign forward hooks, a device other than CPU (not measured there yet) - and the sampler then calls
the model's forward as before. LoRA adapters (peft) are covered: their layers are called as modules.

Shapes: n live rows, H hidden size, h heads, d head dim, L cached positions, V vocabulary.
"""

from __future__ import annotations

import abc
import functools
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from transformers import DynamicCache

from core.hf import full_sdpa_attention
from core.registry import Registry

FUSED_DECODERS: Registry[type] = Registry("fused decoder")  # config.model_type -> decoder class


class KVBuffers:
    """Per-layer keys and values with room for ``capacity`` more positions: (n, h, L + capacity, d) each. A step
    writes its position in place, where ``DynamicCache.update`` would concatenate (and copy) the whole cache."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], capacity: int) -> None:
        self.length = keys[0].shape[2]
        self.keys = [_with_room(k, capacity) for k in keys]
        self.values = [_with_room(v, capacity) for v in values]

    @classmethod
    def from_cache(cls, cache: DynamicCache, capacity: int) -> KVBuffers:
        return cls([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], capacity)

    def write(self, i: int, k_nhd: torch.Tensor, v_nhd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer ``i``'s new position; return its keys and values so far (views, (n, h, L + 1, d))."""
        L = self.length
        self.keys[i][:, :, L] = k_nhd
        self.values[i][:, :, L] = v_nhd
        return self.keys[i][:, :, : L + 1], self.values[i][:, :, : L + 1]

    def advance(self) -> None:
        self.length += 1

    def keep(self, idx_n: torch.Tensor) -> None:
        """Rows ``idx_n`` stay (finished rows leave the batch)."""
        self.keys = [k[idx_n] for k in self.keys]
        self.values = [v[idx_n] for v in self.values]


def _with_room(x_nhLd: torch.Tensor, capacity: int) -> torch.Tensor:
    n, h, L, d = x_nhLd.shape
    buf = x_nhLd.new_empty(n, h, L + capacity, d)
    buf[:, :, :L] = x_nhLd
    return buf


def rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """The transformers RMSNorm (Llama/Qwen/DeepSeek form), casts included."""
    return _rms_norm(x, *_norm(norm))


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == weight.dtype == torch.float32:  # one operator for the same arithmetic (no casts to make)
        return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` (transformers' RoPE) in fewer operators: ``rotate_half(x) = cat(-x2, x1)``
    is ``roll(x, d/2)`` with the sign moved onto ``sin`` (``signed_sin``), exactly, as ``-a * b == a * -b``."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin_signed


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def plain_experts(experts: torch.nn.Module) -> bool:
    """Whether ``grouped_experts`` reproduces this experts module: transformers' ``grouped_mm`` implementation with
    concatenated gate/up weights, no bias, no expert parallelism, not wrapped by peft (``lora_target_experts``)."""
    return (
        type(experts).__name__.endswith("Experts")
        and not parametrize.is_parametrized(experts)
        and getattr(experts.config, "_experts_implementation", None) == "grouped_mm"
        and getattr(experts, "has_gate", False)
        and getattr(experts, "is_concatenated", False)
        and not getattr(experts, "is_transposed", True)
        and not getattr(experts, "has_bias", True)
        and not getattr(experts, "has_post_expert_norm", True)
        and not getattr(experts, "_is_expert_parallel", True)
    )


def grouped_experts(experts: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """transformers' ``grouped_mm`` experts forward (``integrations.moe``) for ``plain_experts``, operator for
    operator, without its per-call dispatch: ``(h_nH, idx_nK, w_nK) -> out_nH``."""
    num_experts = experts.num_experts
    gate_up_EHI, down_EIH = experts.gate_up_proj.transpose(-2, -1), experts.down_proj.transpose(-2, -1)
    act = F.silu if type(experts.act_fn).__name__ == "SiLUActivation" else experts.act_fn

    def run(h_nH: torch.Tensor, idx_nK: torch.Tensor, w_nK: torch.Tensor) -> torch.Tensor:
        n, K = idx_nK.shape
        expert_S, perm_S = torch.sort(idx_nK.reshape(-1))  # S = n * K (token, expert) pairs, grouped by expert
        offsets = torch.bincount(expert_S, minlength=num_experts).cumsum(0, dtype=torch.int32)
        gate, up = F.grouped_mm(h_nH[perm_S // K], gate_up_EHI, offs=offsets).chunk(2, -1)
        out_SH = F.grouped_mm(act(gate) * up, down_EIH, offs=offsets) * w_nK.reshape(-1)[perm_S].unsqueeze(-1)
        unsorted_SH = torch.empty_like(out_SH)
        unsorted_SH[perm_S] = out_SH
        return unsorted_SH.view(n, K, -1).sum(dim=1).to(h_nH.dtype)  # router weights may be float32

    return run


def qwen3_router(gate: torch.nn.Module) -> Callable[[torch.Tensor], tuple[None, torch.Tensor, torch.Tensor]]:
    """``Qwen3MoeTopKRouter.forward`` (softmax, top-k, optional renormalisation), operator for operator, without the
    module call; any other router runs as its module. The first output (router logits) is not needed here."""
    if type(gate).__name__ != "Qwen3MoeTopKRouter":
        return gate
    weight, top_k, renorm = gate.weight, gate.top_k, gate.norm_topk_prob

    def route(h_nH: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor]:
        logits = F.linear(h_nH, weight)
        w_nK, idx_nK = torch.topk(F.softmax(logits, dtype=torch.float, dim=-1), top_k, dim=-1)
        if renorm:
            w_nK /= w_nK.sum(dim=-1, keepdim=True)
        return None, w_nK.to(logits.dtype), idx_nK

    return route


def decode_attention(q_nh1d, k_nhLd, v_nhLd, mask_n11L, scaling: float) -> torch.Tensor:
    """transformers' sdpa attention for one query token per row (output (n, 1, heads, dv)), the same kernel call:
    grouped-query heads folded into the query length under a padding mask (its ``pack_gqa``), the kernel's own
    ``enable_gqa`` without one."""
    n, h, _, d = q_nh1d.shape
    hkv = k_nhLd.shape[1]
    if h != hkv and mask_n11L is not None:
        q_nh1d = q_nh1d.reshape(n, hkv, h // hkv, d)
    out = F.scaled_dot_product_attention(
        q_nh1d, k_nhLd, v_nhLd, attn_mask=mask_n11L, scale=scaling, enable_gqa=h != hkv and mask_n11L is None
    )
    return out.reshape(n, h, 1, -1).transpose(1, 2)


def linear(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` as a function: ``F.linear`` on its weights for a plain ``nn.Linear`` (no module-call overhead),
    the module itself otherwise (LoRA layers)."""
    if type(module) is torch.nn.Linear:
        return functools.partial(F.linear, weight=module.weight, bias=module.bias)
    return module


class FusedDecoder(abc.ABC):
    """The decode step common to the families: embed, rotary tables once, per layer ``x += attention(norm(x))``
    and ``x += mlp(norm(x))``, final norm, LM head. Subclasses build the KV buffers and the attention. What can be
    decided once (which modules are plain, which weights to concatenate) is decided at construction: a decoder
    lives for one ``sample`` call, during which the weights do not change."""

    model_class = ""  # the exact transformers class covered

    def __init__(self, model: torch.nn.Module, kv: KVBuffers) -> None:
        self.model, self.core, self.kv = model, model.model, kv
        self.layers = list(self.core.layers)
        self.mlps = [_mlp_fn(layer.mlp) for layer in self.layers]
        self.norms = [(_norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)) for layer in self.layers]
        self.final_norm, self.lm_head = _norm(self.core.norm), linear(model.lm_head)

    def keep(self, idx_n: torch.Tensor) -> None:
        self.kv.keep(idx_n)

    def step(self, tok_n: torch.Tensor, pos_n: torch.Tensor, mask_n11L: torch.Tensor | None) -> torch.Tensor:
        """Logits (n, V) of the next token after ``tok_n`` at positions ``pos_n``; ``mask_n11L`` is the boolean
        padding mask over the cached positions and this one (None: no padding)."""
        x = self.core.embed_tokens(tok_n[:, None])  # (n, 1, H)
        cos, sin = self.rotary_tables(*self.core.rotary_emb(x, pos_n[:, None]))  # from (n, 1, d) each
        for i, layer in enumerate(self.layers):
            (w1, eps1), (w2, eps2) = self.norms[i]
            x = x + self.attention(i, layer.self_attn, _rms_norm(x, w1, eps1), cos, sin, mask_n11L)
            x = x + self.mlps[i](_rms_norm(x, w2, eps2))
        self.kv.advance()
        return self.lm_head(_rms_norm(x, *self.final_norm))[:, 0]

    def rotary_tables(self, cos_n1d: torch.Tensor, sin_n1d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The RoPE tables as this family's ``attention`` takes them, made once per step."""
        return cos_n1d, sin_n1d

    @abc.abstractmethod
    def attention(self, i: int, attn, h_n1H, cos, sin, mask_n11L) -> torch.Tensor:
        """Layer ``i``'s attention output (n, 1, H) for the normed hidden state; writes its keys and values."""


def _norm(norm: torch.nn.Module) -> tuple[torch.Tensor, float]:
    return norm.weight, norm.variance_epsilon


def _mlp_fn(block: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's MLP as a function of the normed hidden state (n, 1, H): a sparse MoE block (router, experts,
    shared experts if any, summed in the model's order; ``qwen3_router`` / ``grouped_experts`` where they apply,
    the modules otherwise) or the dense MLP module itself."""
    if not hasattr(block, "experts"):
        return block
    experts, shared = block.experts, getattr(block, "shared_experts", None)
    run_experts = grouped_experts(experts) if plain_experts(experts) else experts
    route = qwen3_router(block.gate)

    def moe(h_n1H: torch.Tensor) -> torch.Tensor:
        n, _, H = h_n1H.shape
        _, w_nK, idx_nK = route(h_n1H.view(n, H))
        out = run_experts(h_n1H.view(n, H), idx_nK, w_nK).view(n, 1, H)
        return out if shared is None else out + shared(h_n1H)

    return moe


# concatenated q/k/v weight and bias, stacked q/k norm weights, norm eps, query heads, key/value heads
FusedQKV = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, float, int, int]


@FUSED_DECODERS.register("qwen3_moe")
class Qwen3MoeDecoder(FusedDecoder):
    """``Qwen3MoeForCausalLM``: GQA attention with per-head q/k RMSNorm, then a sparse MoE block (or a dense MLP on
    ``mlp_only_layers``). The q, k and v projections run as one matmul over their concatenated weights, the q and
    k heads are normalised and rotated together (per-head norm weights stacked): the same arithmetic per element
    as the model's separate calls."""

    model_class = "Qwen3MoeForCausalLM"

    def __init__(self, model: torch.nn.Module, cache: DynamicCache, capacity: int) -> None:
        super().__init__(model, KVBuffers.from_cache(cache, capacity))
        self.qkv = [self._fuse_qkv(layer.self_attn) for layer in self.layers]
        self.o_proj = [linear(layer.self_attn.o_proj) for layer in self.layers]
        self.head_dim, self.scaling = self.layers[0].self_attn.head_dim, self.layers[0].self_attn.scaling

    def rotary_tables(self, cos_n1d, sin_n1d):
        return cos_n1d[:, None], signed_sin(sin_n1d)[:, None]  # (n, 1, 1, d): over heads; for ``rope``

    @staticmethod
    def _fuse_qkv(attn: torch.nn.Module) -> FusedQKV | None:
        """Concatenated q/k/v weights and stacked q/k norm weights; None when a projection is not a plain
        ``nn.Linear`` (LoRA adapters, quantised layers): those layers call the modules."""
        projs = (attn.q_proj, attn.k_proj, attn.v_proj)
        if any(type(p) is not torch.nn.Linear for p in projs):
            return None
        weight = torch.cat([p.weight for p in projs])
        bias = torch.cat([p.bias for p in projs]) if attn.q_proj.bias is not None else None
        d = attn.head_dim
        hq, hkv = attn.q_proj.out_features // d, attn.k_proj.out_features // d
        norm = torch.cat([attn.q_norm.weight.expand(hq, d), attn.k_norm.weight.expand(hkv, d)])  # (hq + hkv, d)
        if attn.q_norm.variance_epsilon != attn.k_norm.variance_epsilon:
            return None
        return weight, bias, norm, attn.q_norm.variance_epsilon, hq, hkv

    def attention(self, i, attn, h_n1H, cos, sin, mask_n11L):
        n, d = h_n1H.shape[0], self.head_dim
        if self.qkv[i] is None:
            q = rms_norm(attn.q_proj(h_n1H).view(n, 1, -1, d), attn.q_norm).transpose(1, 2)
            k = rms_norm(attn.k_proj(h_n1H).view(n, 1, -1, d), attn.k_norm).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            v = attn.v_proj(h_n1H).view(n, -1, d)
        else:
            w_qkv, b_qkv, w_norm, eps, hq, hkv = self.qkv[i]
            qkv = F.linear(h_n1H, w_qkv, b_qkv)
            qk = _rms_norm(qkv[..., : (hq + hkv) * d].view(n, 1, hq + hkv, d), w_norm, eps)
            qk = qk.transpose(1, 2)  # (n, hq + hkv, 1, d)
            qk = rope(qk, cos, sin)
            q, k, v = qk[:, :hq], qk[:, hq:], qkv[..., (hq + hkv) * d :].view(n, hkv, d)
        keys, values = self.kv.write(i, k[:, :, 0], v)
        o = decode_attention(q, keys, values, mask_n11L, self.scaling)
        return self.o_proj[i](o.reshape(n, 1, -1))


@FUSED_DECODERS.register("deepseek_v3")
class DeepseekV3Decoder(FusedDecoder):
    """``DeepseekV3ForCausalLM``: multi-head latent attention, then a dense MLP (first layers) or an MoE block with
    group-limited routing and shared experts. transformers caches the compressed latents and re-expands every
    cached position through ``kv_b_proj`` at every step; here each position's keys and values are expanded once,
    when it is written, and kept expanded (the same per-position arithmetic, ``expand_kv``)."""

    model_class = "DeepseekV3ForCausalLM"

    def __init__(self, model: torch.nn.Module, cache: DynamicCache, capacity: int) -> None:
        layers = model.model.layers
        expanded = [layer.self_attn.expand_kv(c.keys, c.values) for layer, c in zip(layers, cache.layers, strict=True)]
        super().__init__(model, KVBuffers([k for k, _ in expanded], [v for _, v in expanded], capacity))
        modeling = sys.modules[type(model).__module__]
        self.rotate = (
            modeling.apply_rotary_pos_emb_interleave if model.config.rope_interleave else modeling.apply_rotary_pos_emb
        )
        self.proj = [
            (linear(a.q_proj) if a.q_lora_rank is None else None, linear(a.kv_a_proj_with_mqa), linear(a.o_proj))
            for a in (layer.self_attn for layer in self.layers)
        ]

    def attention(self, i, attn, h_n1H, cos, sin, mask_n11L):
        n = h_n1H.shape[0]
        q_proj, kv_a_proj, o_proj = self.proj[i]
        q = q_proj(h_n1H) if q_proj is not None else attn.q_b_proj(rms_norm(attn.q_a_proj(h_n1H), attn.q_a_layernorm))
        q = q.view(n, 1, -1, attn.qk_head_dim).transpose(1, 2)
        q_pass, q_rot = torch.split(q, [attn.qk_nope_head_dim, attn.qk_rope_head_dim], dim=-1)
        kv_nope, k_rot = torch.split(kv_a_proj(h_n1H), [attn.kv_lora_rank, attn.qk_rope_head_dim], -1)
        kv_nope = rms_norm(kv_nope, attn.kv_a_layernorm).view(n, 1, 1, attn.kv_lora_rank)
        q_rot, k_rot = self.rotate(q_rot, k_rot.view(n, 1, 1, attn.qk_rope_head_dim), cos, sin)
        k_new, v_new = attn.expand_kv(kv_nope, k_rot)
        keys, values = self.kv.write(i, k_new[:, :, 0], v_new[:, :, 0])
        query = torch.cat((q_pass, q_rot), dim=-1)
        o = decode_attention(query, keys, values, mask_n11L, attn.scaling)
        return o_proj(o.reshape(n, 1, -1))


def fused_decoder(model: torch.nn.Module, cache: DynamicCache, capacity: int) -> FusedDecoder | None:
    """A fused decoder for ``model`` (or the transformers model inside a peft wrapper) holding ``cache``'s keys and
    values, with room for ``capacity`` more positions; None when ``unsupported(model)`` names a reason."""
    if unsupported(model) is not None:
        return None
    base = _unwrapped(model)
    return FUSED_DECODERS.get(base.config.model_type)(base, cache, capacity)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (its LoRA layers in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot use a fused decode step as it is (None: it can). LoRA adapters are fine: the fused
    step calls every projection module except plain ``nn.Linear`` ones it concatenates."""
    base = _unwrapped(model)
    config = base.config
    model_type = getattr(config, "model_type", None)
    if model_type not in FUSED_DECODERS:
        return f"no fused decoder for model_type {model_type!r} (known: {', '.join(FUSED_DECODERS.names())})"
    if type(base).__name__ != FUSED_DECODERS.get(model_type).model_class:
        return f"{type(base).__name__} is not {FUSED_DECODERS.get(model_type).model_class}"
    device = next(base.parameters()).device
    if device.type != "cpu":
        return f"fused decoding is measured on CPU only (model on {device.type})"
    if model.training or base.training:
        return "the model is in training mode (dropout)"
    if not full_sdpa_attention(config):
        impl = getattr(config, "_attn_implementation", None)
        return f"attention is not sdpa over every position of every layer ({impl!r}; sliding windows or chunks)"
    for name, module in model.named_modules():
        if "RMSNorm" in type(module).__name__ and not hasattr(module, "variance_epsilon"):
            return f"{name} is an RMSNorm of another form ({type(module).__name__})"
        hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        if hooks:
            return f"{name or 'the model'} has forward hooks the fused step would skip"
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return "global forward hooks are registered"
    return None
