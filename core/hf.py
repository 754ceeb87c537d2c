"""What the decode loop (rollouts) and the training forward (rl) both need to know about a transformers model."""

from __future__ import annotations

import inspect


def _cache_kwarg() -> str:
    """The forward's name for the KV cache: transformers renamed ``past_key_values`` to ``cache`` (the old name warns
    a FutureWarning on every call and goes in 5.40)."""
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


CACHE_KWARG = _cache_kwarg()


def full_sdpa_attention(config) -> bool:
    """Whether every layer of a model with this (text) config runs sdpa attention over all earlier positions: no
    eager (additive float masks) or flash attention, no sliding windows or chunks. The fused decode step, the
    sampler's ready-made decode mask and the packed training forward all build masks that assume it."""
    layer_types = getattr(config, "layer_types", None) or []
    return (
        getattr(config, "_attn_implementation", None) == "sdpa"
        and all(t == "full_attention" for t in layer_types)
        and not getattr(config, "sliding_window", None)
        and not getattr(config, "attention_chunk_size", None)
    )
