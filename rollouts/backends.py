"""Generation backends. A backend turns prompts into grouped completions; the transformers one is the first.

The interface is deliberately small so a faster engine (vLLM, SGLang) can be added beside it::

    backend.generate(prompts, group_ids, num_generations=G, greedy=False) -> RolloutBatch
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

from rl.registry import Registry
from rollouts.records import Completion, Prompt, RolloutBatch


class GenerationBackend(Protocol):
    def generate(
        self, prompts: Sequence[Prompt], group_ids: Sequence[int], *, num_generations: int, greedy: bool = False
    ) -> RolloutBatch: ...


BACKENDS: Registry[type] = Registry("generation backend")


@contextlib.contextmanager
def router_logits_off(model: torch.nn.Module) -> Iterator[None]:
    """Turn ``output_router_logits`` off while generating.

    With it on, transformers' MoE models compute the router aux loss inside ``generate`` and crash on left-padded
    batches (the attention mask and the concatenated router logits disagree in length once the KV cache is used).
    Training wants it on for the aux loss, and user checkpoints often ship with it on, so it is switched off for
    generation only, on every config in the model (peft wraps the base model).
    """
    configs = [m.config for m in model.modules() if hasattr(getattr(m, "config", None), "output_router_logits")]
    saved = [c.output_router_logits for c in configs]
    for c in configs:
        c.output_router_logits = False
    try:
        yield
    finally:
        for c, v in zip(configs, saved, strict=True):
            c.output_router_logits = v


@BACKENDS.register("transformers")
class TransformersBackend:
    """Batched ``model.generate`` with left padding; G samples per prompt; stops at EOS or ``max_new_tokens``."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        batch_size: int | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")
        self.eos_ids = _eos_ids(model, tokenizer)

    def generate(
        self, prompts: Sequence[Prompt], group_ids: Sequence[int], *, num_generations: int, greedy: bool = False
    ) -> RolloutBatch:
        if len(prompts) != len(group_ids):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(group_ids)} group ids")
        prompt_ids = [self.tokenizer.encode(p.text, add_special_tokens=True) for p in prompts]
        rows = [
            (p, g, ids)
            for p, g, ids in zip(prompts, group_ids, prompt_ids, strict=True)
            for _ in range(num_generations)
        ]
        step = self.batch_size or len(rows)
        completions: list[Completion] = []
        for start in range(0, len(rows), step):
            completions.extend(self._generate_rows(rows[start : start + step], greedy))
        return RolloutBatch(completions)

    @torch.no_grad()
    def _generate_rows(self, rows, greedy: bool) -> list[Completion]:
        device = next(self.model.parameters()).device
        P = max(len(ids) for _, _, ids in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (P - len(ids)) + ids for _, _, ids in rows], device=device)
        attention = torch.tensor([[0] * (P - len(ids)) + [1] * len(ids) for _, _, ids in rows], device=device)
        sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        was_training = self.model.training
        self.model.eval()
        with router_logits_off(self.model):
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=self.max_new_tokens,
                do_sample=not greedy, pad_token_id=pad, eos_token_id=self.eos_ids, **sampling,
            )  # fmt: skip
        self.model.train(was_training)
        return [self._completion(row, gen) for row, gen in zip(rows, out[:, P:].tolist(), strict=True)]

    def _completion(self, row, gen: list[int]) -> Completion:
        prompt, group_id, ids = row
        cut = next((i for i, t in enumerate(gen) if t in self.eos_ids), None)
        tokens = gen if cut is None else gen[: cut + 1]  # keep the EOS: the model must learn to stop
        text = self.tokenizer.decode(tokens if cut is None else tokens[:-1], skip_special_tokens=False)
        return Completion(group_id, prompt, ids, tokens, text, "length" if cut is None else "eos")


def _eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    ids.discard(None)
    if not ids:
        raise ValueError("neither the tokenizer nor the generation config defines an EOS token")
    return sorted(ids)
