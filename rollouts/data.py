"""Prompt datasets: synthetic tasks or files/hub datasets, as ``Prompt`` records, plus the resumable sampler."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollouts.adapters import ADAPTERS, prompt_formatter
from rollouts.records import Prompt
from rollouts.tasks import split_examples, to_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSets:
    train: list[Prompt]
    eval: list[Prompt]

    @property
    def columns(self) -> list[str]:
        return sorted({k for p in self.train[:100] for k in p.columns})


def load_prompt_sets(
    *, task: str | None, path: str | None, split: str, prompt_column: str, template: str,
    num_train: int, num_eval: int, seed: int, subset: str | None = None, adapter: str = "generic",
    filters: Mapping[str, Sequence[Any]] | None = None, tokenizer=None,
) -> PromptSets:  # fmt: skip
    """Train and held-out prompts: a synthetic ``task``, or dataset rows read through an adapter.

    Dataset rows are visited in a seeded random order; rows failing ``filters`` or without a usable answer are
    skipped, the first ``num_eval`` kept become the held-out set and the next ``num_train`` the training set.
    ``tokenizer`` is needed only by the ``chat`` template.
    """
    if task is not None:
        train, ev = split_examples(task, n_train=num_train, n_eval=num_eval, seed=seed)
        return PromptSets(to_prompts(train, template, "train-"), to_prompts(ev, template, "eval-"))
    ds = open_dataset(path, subset=subset, split=split)
    if len(ds) == 0:
        raise ValueError(f"data.path: {path!r} has no rows")
    adapt, fmt = ADAPTERS.get(adapter), prompt_formatter(template, tokenizer)
    filters = dict(filters or {})
    unknown = [k for k in filters if k not in ds.column_names]
    if unknown:
        raise ValueError(f"data.filter: {unknown} not column(s) of {path!r} (it has {sorted(ds.column_names)})")
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    prompts: list[Prompt] = []
    filtered = unusable = 0
    for i in order:  # stop early: a 800k-row dataset is not read in full for a 4k-prompt run
        if len(prompts) == num_eval + num_train:
            break
        row = ds[i]
        if any(row[k] not in allowed for k, allowed in filters.items()):
            filtered += 1
            continue
        ad = adapt(row, prompt_column)
        if ad is None:
            unusable += 1
            continue
        prompts.append(Prompt(f"row-{i}", fmt(ad.question), ad.columns))
    log.info("data: %d prompts from %s (%d filtered out, %d without an answer)", len(prompts), path, filtered,
             unusable)  # fmt: skip
    if len(prompts) <= num_eval:
        raise ValueError(
            f"data.num_eval: {num_eval} leaves no training rows out of the {len(prompts)} usable rows in {path!r}"
        )
    return PromptSets(prompts[num_eval:], prompts[:num_eval])


FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def open_dataset(path: str, *, subset: str | None, split: str):
    """A ``datasets.Dataset``: a local file or directory when ``path`` exists on disk, else a hub dataset id."""
    import datasets

    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix not in FILE_BUILDERS:
            raise ValueError(f"data.path: {path!r} is not one of {sorted(FILE_BUILDERS)}")
        return datasets.load_dataset(FILE_BUILDERS[p.suffix], data_files=str(p), split="train")
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(p))  # saved with save_to_disk
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(str(p) if p.is_dir() else path, subset, split=split)


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
