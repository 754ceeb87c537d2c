"""Generation backends. A backend turns prompts into grouped completions: ``transformers`` (r1kit's own sampler
or ``model.generate``, over the training module itself) and ``vllm`` (``rollouts.vllm_backend``: vLLM's engine in
the same process, with its own copy of the weights).

The interface is small::

    backend.generate(prompts, group_ids, num_generations=G, greedy=False) -> RolloutBatch
    backend.update_weights()   the training module's weights changed: an engine with its own copy reloads them
                               before it next generates (a no-op for the transformers backend, which reads them)
    backend.pop_metrics()      timings the backend measured since the last call (weight sync), as metrics
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch

from core.registry import Registry
from rollouts.records import Completion, Prompt, RolloutBatch
from rollouts.stops import generated_stop_criteria, stop_strings


class GenerationBackend(Protocol):
    def generate(
        self, prompts: Sequence[Prompt], group_ids: Sequence[int], *, num_generations: int, greedy: bool = False
    ) -> RolloutBatch: ...

    def update_weights(self) -> None: ...

    def pop_metrics(self) -> dict[str, float]: ...


BACKENDS: Registry[type] = Registry("generation backend")

Row = tuple[Prompt, int, list[int]]
"""One row to generate: (prompt, group id, prompt token ids)."""
SAMPLERS: Registry[Callable[[TransformersBackend, list[Row], bool], list[Completion]]] = Registry("sampler")
"""Decoding loops of ``TransformersBackend``: ``sampler(backend, rows, greedy) -> completions``, one per row."""


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


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside (None: unchanged)."""
    saved = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The prompt's token ids with the tokenizer's special tokens (a BOS), unless the text already starts with the
    BOS token: a chat template renders it itself, and encoding would add a second one (TRL encodes chat prompts
    without special tokens for the same reason)."""
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos)))


@BACKENDS.register("transformers")
class TransformersBackend:
    """G samples per prompt from a transformers model; each row stops at EOS, a stop string or ``max_new_tokens``.

    ``sampler`` names the decoding loop in ``SAMPLERS``: ``r1kit`` (default) runs ``rollouts.sampler.sample``: each
    prompt prefilled once for its group, finished rows dropped, no ``generate`` overhead per token, and
    (``fused_decode``) a fused decode step for the families ``rollouts.fused`` covers. ``generate`` is the
    reference path: batched ``model.generate`` with left padding. Both give the same tokens under the same seed.
    ``threads``: torch's CPU threads while generating (None: unchanged). ``stop``: stop strings
    (``rollouts.stops``); the token completing one is kept and the row ends there, ``finish_reason == "stop"``.
    ``sync``: synced decoding for sharded weights (FSDP2), where every forward is a collective and all processes
    must run as many: the all-reduce ``sync(still_decoding_here) -> any_process_still_decoding`` that
    ``rollouts.sampler.sample`` asks after each step (it then never uses the fused step). The ``generate`` sampler
    runs transformers' own mechanism instead (``synced_gpus=True``: it all-reduces over the default process group
    itself, and does not call ``sync``).
    """

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
        sampler: str = "r1kit",
        fused_decode: bool = True,
        threads: int | None = None,
        stop: Sequence[str] = (),
        sync: Callable[[bool], bool] | None = None,
    ) -> None:
        self._sample_rows = SAMPLERS.get(sampler)  # an unknown name raises, listing the known ones
        self.model, self.tokenizer, self.sampler = model, tokenizer, sampler
        self.fused_decode, self.threads = fused_decode, threads
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.batch_size, self.sync = batch_size, sync
        self.stop = stop_strings(tokenizer, stop)  # None without stop strings: no check runs
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")
        self.eos_ids = eos_ids_of(model, tokenizer)

    def generate(
        self, prompts: Sequence[Prompt], group_ids: Sequence[int], *, num_generations: int, greedy: bool = False
    ) -> RolloutBatch:
        if len(prompts) != len(group_ids):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(group_ids)} group ids")
        prompt_ids = [encode_prompt(self.tokenizer, p.text) for p in prompts]
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

    def update_weights(self) -> None:
        """Nothing to do: this backend samples from the training module itself."""

    def pop_metrics(self) -> dict[str, float]:
        return {}

    def _generate_rows(self, rows: list[Row], greedy: bool) -> list[Completion]:
        was_training = self.model.training
        self.model.eval()
        try:
            with router_logits_off(self.model), torch_threads(self.threads):
                return self._sample_rows(self, rows, greedy)
        finally:
            self.model.train(was_training)

    def completion(self, row: Row, gen: list[int]) -> Completion:
        """The record of one generated row (``cut_completion`` with this backend's EOS ids and stop strings)."""
        return cut_completion(self.tokenizer, self.eos_ids, self.stop, row, gen)


def cut_completion(tokenizer, eos_ids: Sequence[int], stop, row: Row, gen: list[int]) -> Completion:
    """The record of one generated row: tokens through the first EOS (kept) or through the token that completes a
    stop string (kept, with any text it carries past the stop), decoded text, finish reason.

    Every backend's rows are cut here by the one definition in ``rollouts.stops``: the r1kit sampler stopped there
    already; ``generate`` stops by transformers' criterion, which reads token strings rather than the decoded text,
    and vLLM by its own string match; any row an engine ran past that point is cut back to it. ``stop``: a
    ``rollouts.stops`` matcher, or None without stop strings."""
    prompt, group_id, ids = row
    cut = next((i for i, t in enumerate(gen) if t in eos_ids), None)
    tokens = gen if cut is None else gen[: cut + 1]  # keep the EOS: the model must learn to stop
    body = tokens if cut is None else tokens[:-1]
    text = tokenizer.decode(body, skip_special_tokens=False)
    kept = None if stop is None else stop.first_stop(body, text)
    if kept is not None:  # a stop string before any EOS: keep through the token that completes it
        tokens = body[:kept]
        text = tokenizer.decode(tokens, skip_special_tokens=False)
    reason = "stop" if kept is not None else "length" if cut is None else "eos"
    return Completion(group_id, prompt, ids, tokens, text, reason)


@SAMPLERS.register("r1kit")
def r1kit_sampler(backend: TransformersBackend, rows: list[Row], greedy: bool) -> list[Completion]:
    """``rollouts.sampler.sample``: one prefill per group, finished rows leave the batch; keeps its log-probs."""
    # Imported here: rollouts.sampler loads transformers (~2 s), and rl.config reads SAMPLERS' names without it.
    from rollouts.sampler import sample

    # Consecutive rows of one group share a prompt: one unit (prompt ids, repeats) per run of rows.
    units: list[tuple[int, list[int], int]] = []
    for _, g, ids in rows:
        if units and units[-1][0] == g and units[-1][1] == ids:
            units[-1] = (g, ids, units[-1][2] + 1)
        else:
            units.append((g, ids, 1))
    b = backend
    out = sample(
        b.model,
        [ids for _, ids, _ in units],
        [n for _, _, n in units],
        max_new_tokens=b.max_new_tokens,
        eos_ids=b.eos_ids,
        pad_id=b.tokenizer.pad_token_id,
        temperature=b.temperature,
        top_p=b.top_p,
        top_k=b.top_k,
        greedy=greedy,
        fused=b.fused_decode,
        stop=b.stop,
        sync=b.sync,
    )
    completions = [b.completion(row, gen) for row, gen in zip(rows, out.tokens, strict=True)]
    for c, lp in zip(completions, out.logprobs, strict=True):
        c.logprobs = lp[: c.num_tokens]
    return completions


@SAMPLERS.register("generate")
@torch.no_grad()
def generate_sampler(backend: TransformersBackend, rows: list[Row], greedy: bool) -> list[Completion]:
    """Batched ``model.generate`` with left padding: the reference the r1kit sampler is tested against."""
    b = backend
    device = next(b.model.parameters()).device
    P = max(len(ids) for _, _, ids in rows)
    pad = b.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (P - len(ids)) + ids for _, _, ids in rows], device=device)
    attention = torch.tensor([[0] * (P - len(ids)) + [1] * len(ids) for _, _, ids in rows], device=device)
    sampling = {} if greedy else {"temperature": b.temperature, "top_p": b.top_p, "top_k": b.top_k}
    if b.stop is not None:  # transformers' own stop-string criterion; completion() then cuts where r1kit stops
        sampling["stopping_criteria"] = generated_stop_criteria(b.stop, P)
    out = b.model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=b.max_new_tokens,
        do_sample=not greedy,
        pad_token_id=pad,
        eos_token_id=b.eos_ids,
        # Synced: every process runs forwards until all are done (finished ones sample nothing), as r1kit's sync.
        # Explicit False otherwise: transformers would guess from FSDP/ZeRO-3 wrappers; r1kit's switch is ``sync``.
        synced_gpus=b.sync is not None,
        **sampling,
    )
    return [b.completion(row, gen) for row, gen in zip(rows, out[:, P:].tolist(), strict=True)]


def eos_ids_of(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    ids.discard(None)
    if not ids:
        raise ValueError("neither the tokenizer nor the generation config defines an EOS token")
    return sorted(ids)


@BACKENDS.register("vllm")
def vllm_backend(model: torch.nn.Module, tokenizer, **kwargs):
    """``rollouts.vllm_backend.VLLMBackend``: vLLM's engine in this process (imported only when chosen)."""
    from rollouts.vllm_backend import VLLMBackend

    return VLLMBackend(model, tokenizer, **kwargs)
