"""Prompt datasets: synthetic tasks or files/hub datasets, as ``Prompt`` records, plus the resumable sampler."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rollouts.records import Prompt
from rollouts.tasks import TEMPLATES, split_examples, to_prompts


@dataclass(frozen=True)
class PromptSets:
    train: list[Prompt]
    eval: list[Prompt]

    @property
    def columns(self) -> list[str]:
        return sorted({k for p in self.train[:100] for k in p.columns})


def load_prompt_sets(
    *, task: str | None, path: str | None, split: str, prompt_column: str, template: str,
    num_train: int, num_eval: int, seed: int,
) -> PromptSets:  # fmt: skip
    if task is not None:
        train, ev = split_examples(task, n_train=num_train, n_eval=num_eval, seed=seed)
        return PromptSets(to_prompts(train, template, "train-"), to_prompts(ev, template, "eval-"))
    rows = _read_rows(path, split)
    if not rows:
        raise ValueError(f"data.path: {path!r} has no rows")
    if prompt_column not in rows[0]:
        raise ValueError(
            f"data.prompt_column: {prompt_column!r} is not a column of {path!r} (it has {sorted(rows[0])})"
        )
    tpl = TEMPLATES.get(template)
    prompts = [
        Prompt(f"row-{i}", tpl.format(question=r[prompt_column]), {k: v for k, v in r.items() if k != prompt_column})
        for i, r in enumerate(rows)
    ]
    random.Random(seed).shuffle(prompts)
    if len(prompts) <= num_eval:
        raise ValueError(f"data.num_eval: {num_eval} leaves no training rows out of {len(prompts)} in {path!r}")
    return PromptSets(prompts[num_eval : num_eval + num_train], prompts[:num_eval])


def _read_rows(path: str, split: str) -> list[dict]:
    import datasets

    p = Path(path)
    if p.suffix in (".jsonl", ".json") and p.is_file():
        return list(datasets.load_dataset("json", data_files=str(p), split="train"))
    return list(datasets.load_dataset(path, split=split))


class PromptSampler:
    """Shuffled passes over the training prompts; ``position`` (prompts consumed) is all a resume needs."""

    def __init__(self, prompts: Sequence[Prompt], seed: int, position: int = 0) -> None:
        self.prompts, self.seed, self.position = list(prompts), seed, position
        self._cached: tuple[int, list[int]] = (-1, [])

    def _order(self, epoch: int) -> list[int]:
        if self._cached[0] != epoch:
            order = list(range(len(self.prompts)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._cached = (epoch, order)
        return self._cached[1]

    def take(self, n: int) -> list[Prompt]:
        """The next ``n`` prompts.

        >>> s = PromptSampler([Prompt(str(i), str(i)) for i in range(3)], seed=0)
        >>> a = [p.prompt_id for p in s.take(2)]; b = [p.prompt_id for p in s.take(2)]
        >>> len(a + b), s.position, sorted(a + b[:1])
        (4, 4, ['0', '1', '2'])
        """
        out = []
        for _ in range(n):
            epoch, idx = divmod(self.position, len(self.prompts))
            out.append(self.prompts[self._order(epoch)[idx]])
            self.position += 1
        return out
