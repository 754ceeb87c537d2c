"""Typed rollout records: prompts, completions, and the batch they form. Groups are explicit (``group_id``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

FinishReason = Literal["eos", "stop", "length"]
"""EOS sampled (kept), a stop string completed (``rollout.stop``; the completing token kept), or cut at
``max_new_tokens``."""


@dataclass(frozen=True)
class Prompt:
    """One dataset row: the text the model is given, plus the columns rewards read (e.g. ``answer``)."""

    prompt_id: str
    text: str
    columns: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] | None = None
    """The chat messages ``text`` was rendered from (``data.template: chat``), else None. Rewards then receive
    the prompt as these messages and each completion as ``[{"role": "assistant", "content": ...}]``, as in TRL."""


@dataclass
class Completion:
    """One sampled answer to a prompt. ``token_ids`` end with EOS when ``finish_reason == "eos"``, with the token
    that completed a stop string when it is ``"stop"``."""

    group_id: int
    prompt: Prompt
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float] | None = None
    """Per-token log-probabilities under the policy that sampled it (filled by the trainer)."""

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class RolloutBatch:
    """All completions of one step: ``len(groups) * G`` rows, each row tagged with its group id."""

    completions: list[Completion]

    @property
    def group_ids(self) -> list[int]:
        return [c.group_id for c in self.completions]

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]

    @property
    def prompt_texts(self) -> list[str]:
        return [c.prompt.text for c in self.completions]

    @property
    def completion_ids(self) -> list[list[int]]:
        """Each completion's token ids (ending with EOS when it stopped there), as TRL's ``completion_ids``."""
        return [list(c.token_ids) for c in self.completions]

    @property
    def reward_prompts(self) -> list[str | list[dict[str, str]]]:
        """Prompts as rewards receive them: the chat messages of a conversational prompt (a copy), else the text."""
        return [
            c.prompt.text if c.prompt.messages is None else [dict(m) for m in c.prompt.messages]
            for c in self.completions
        ]

    @property
    def reward_completions(self) -> list[str | list[dict[str, str]]]:
        """Completions as rewards receive them: ``[{"role": "assistant", "content": text}]`` for a conversational
        prompt (TRL's form), else the text.

        >>> chat = Prompt("q", "<user>hi", messages=[{"role": "user", "content": "hi"}])
        >>> b = RolloutBatch([Completion(0, chat, [1], [2], "yo", "eos"), Completion(1, Prompt("r", "hi"), [1], [2],
        ...     "yo", "eos")])
        >>> b.reward_prompts, b.reward_completions
        ([[{'role': 'user', 'content': 'hi'}], 'hi'], [[{'role': 'assistant', 'content': 'yo'}], 'yo'])
        """
        return [
            c.text if c.prompt.messages is None else [{"role": "assistant", "content": c.text}]
            for c in self.completions
        ]

    def columns(self) -> dict[str, list[Any]]:
        """Dataset columns, one value per completion, for the rewards."""
        names = sorted({k for c in self.completions for k in c.prompt.columns})
        return {k: [c.prompt.columns.get(k) for c in self.completions] for k in names}

    def __len__(self) -> int:
        return len(self.completions)


@dataclass
class SequenceTensors:
    """Prompt (left-padded) + completion (right-padded) as one padded batch for the training forward.

    input_ids_BL / attention_mask_BL: L = P + T; completion_mask_BT marks real completion tokens;
    position_ids_BL count real tokens only, so left padding does not shift positions.
    """

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    position_ids_BL: torch.Tensor
    completion_ids_BT: torch.Tensor
    completion_mask_BT: torch.Tensor
    prompt_len: int

    def select(self, rows: torch.Tensor | Sequence[int]) -> SequenceTensors:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return SequenceTensors(
            self.input_ids_BL[rows],
            self.attention_mask_BL[rows],
            self.position_ids_BL[rows],
            self.completion_ids_BT[rows],
            self.completion_mask_BT[rows],
            self.prompt_len,
        )

    def to(self, device: torch.device | str) -> SequenceTensors:
        return SequenceTensors(
            *(t.to(device) for t in (self.input_ids_BL, self.attention_mask_BL, self.position_ids_BL)),
            self.completion_ids_BT.to(device),
            self.completion_mask_BT.to(device),
            self.prompt_len,
        )


def to_tensors(completions: Sequence[Completion], pad_id: int) -> SequenceTensors:
    """Pack completions into ``SequenceTensors`` (prompts left-padded to P, completions right-padded to T).

    >>> p = Prompt("q", "x")
    >>> c = [Completion(0, p, [5, 6], [7], "a", "eos"), Completion(0, p, [6], [8, 9], "b", "length")]
    >>> t = to_tensors(c, pad_id=0)
    >>> t.input_ids_BL.tolist(), t.completion_mask_BT.tolist(), t.position_ids_BL.tolist()
    ([[5, 6, 7, 0], [0, 6, 8, 9]], [[1, 0], [1, 1]], [[0, 1, 2, 2], [0, 0, 1, 2]])
    """
    P = max(len(c.prompt_ids) for c in completions)
    T = max(max(len(c.token_ids) for c in completions), 1)
    B = len(completions)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    for i, c in enumerate(completions):
        n_p, n_c = len(c.prompt_ids), len(c.token_ids)
        ids[i, P - n_p : P] = torch.tensor(c.prompt_ids, dtype=torch.long)
        ids[i, P : P + n_c] = torch.tensor(c.token_ids, dtype=torch.long)
        attn[i, P - n_p : P + n_c] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return SequenceTensors(ids, attn, pos, ids[:, P:].clone(), attn[:, P:].clone(), P)
