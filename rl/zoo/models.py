"""The tiny MoE models: a character tokenizer and a few-million-parameter config per MoE family, randomly
initialised. ``rl.zoo.pretraining`` turns one into the pre-trained base a ``tiny://<family>/<task>`` ref names.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerFast

from core.registry import Registry

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, the four R1 tags as single tokens, and pad/eos/unk."""
    chars = list(dict.fromkeys(string.printable))
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *TAGS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_tokens(TAGS)  # matched before the per-character split
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    fast.padding_side = "left"
    return fast


def _merged(overrides: dict, **defaults) -> dict:
    """The family's tiny defaults, with any key the caller sets (e.g. a larger ``hidden_size``) taking precedence."""
    return {**defaults, **overrides}


TINY_FAMILIES: Registry[Callable[..., PretrainedConfig]] = Registry("tiny model family")


@TINY_FAMILIES.register("deepseek_v3")
def _deepseek_v3(vocab_size: int, **kw) -> PretrainedConfig:
    from transformers import DeepseekV3Config

    # DeepSeek-V3 layout in miniature: MLA attention, first layer dense, 8 routed experts (top-2) in 4 groups of
    # which 2 may be chosen (sigmoid group-limited routing), one shared expert.
    return DeepseekV3Config(
        **_merged(
            kw,
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=256,
            moe_intermediate_size=96,
            num_hidden_layers=4,
            first_k_dense_replace=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_shared_experts=1,
            n_group=4,
            topk_group=2,
            q_lora_rank=None,
            kv_lora_rank=32,
            qk_rope_head_dim=16,
            qk_nope_head_dim=16,
            v_head_dim=32,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    )


@TINY_FAMILIES.register("qwen3_moe")
def _qwen3_moe(vocab_size: int, **kw) -> PretrainedConfig:
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        **_merged(
            kw,
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=256,
            moe_intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    )


@TINY_FAMILIES.register("olmoe")
def _olmoe(vocab_size: int, **kw) -> PretrainedConfig:
    from transformers import OlmoeConfig

    return OlmoeConfig(
        **_merged(
            kw,
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    )


@TINY_FAMILIES.register("mixtral")
def _mixtral(vocab_size: int, **kw) -> PretrainedConfig:
    from transformers import MixtralConfig

    return MixtralConfig(
        **_merged(
            kw,
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    )


@TINY_FAMILIES.register("qwen2_moe")
def _qwen2_moe(vocab_size: int, **kw) -> PretrainedConfig:
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        **_merged(
            kw,
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=256,
            moe_intermediate_size=96,
            shared_expert_intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    )


@TINY_FAMILIES.register("qwen3")
def _qwen3_dense(vocab_size: int, **kw) -> PretrainedConfig:
    from transformers import Qwen3Config

    # Dense, and about a third of the MoE families' parameters: the distillation student of the tiny pipeline
    # (recipes/r1_tiny_pipeline.yaml), another architecture and size than its teacher.
    return Qwen3Config(
        **_merged(
            kw,
            vocab_size=vocab_size,
            hidden_size=96,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    )


def tiny_model(family: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config_overrides):
    """A randomly initialised tiny MoE of ``family`` sized for ``tokenizer``."""
    config = TINY_FAMILIES.get(family)(
        len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **config_overrides,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def parse_tiny_ref(ref: str) -> tuple[str, str]:
    """(family, task) of a ``tiny://<family>/<task>`` ref; a ValueError naming the recipe key when malformed.

    >>> parse_tiny_ref("tiny://deepseek_v3/arith")
    ('deepseek_v3', 'arith')
    """
    body = ref.removeprefix("tiny://")
    family, _, task = body.partition("/")
    if not family or not task:
        raise ValueError(
            f"model.name_or_path: {ref!r} must look like tiny://<family>/<task>, e.g. tiny://deepseek_v3/arith"
        )
    TINY_FAMILIES.get(family)
    return family, task
