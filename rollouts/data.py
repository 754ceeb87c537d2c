"""Prompt datasets: synthetic tasks or files/hub datasets, as ``Prompt`` records, plus the resumable sampler."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollouts.adapters import ADAPTERS, chat_messages, prompt_formatter
from rollouts.records import Prompt
from rollouts.tasks import split_examples, to_prompts

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data a recipe names cannot be read or does not fit the recipe; the message names the key and the fix."""


@dataclass(frozen=True)
class PromptSets:
    train: list[Prompt]
    eval: list[Prompt]

    @property
    def columns(self) -> list[str]:
        return sorted({k for p in self.train[:100] for k in p.columns})


def load_prompt_sets(
    *,
    task: str | None,
    path: str | None,
    split: str,
    prompt_column: str,
    template: str,
    num_train: int,
    num_eval: int,
    seed: int,
    subset: str | None = None,
    adapter: str = "generic",
    filters: Mapping[str, Sequence[Any]] | None = None,
    tokenizer=None,
) -> PromptSets:
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
        raise DataError(f"data.path: {path!r} has no rows; point data.path at a dataset with rows")
    adapt, fmt = ADAPTERS.get(adapter), prompt_formatter(template, tokenizer)
    filters = dict(filters or {})
    unknown = [k for k in filters if k not in ds.column_names]
    if unknown:
        raise DataError(
            f"data.filter: {unknown} not column(s) of {path!r} (it has {sorted(ds.column_names)}); filter on those"
        )
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
        messages = chat_messages(ad.question) if template == "chat" else None  # rewards get them, as in TRL
        prompts.append(Prompt(f"row-{i}", fmt(ad.question), ad.columns, messages))
    log.info(
        "data: %d prompts from %s (%d filtered out, %d without an answer)", len(prompts), path, filtered, unusable
    )
    if not prompts:
        raise DataError(
            f"data.path: none of the {len(ds)} rows of {path!r} gave a prompt with an answer ({filtered} filtered "
            f"out by data.filter, {unusable} without an answer for data.adapter={adapter!r}); check both"
        )
    if len(prompts) <= num_eval:
        fits = max(1, len(prompts) // 5)
        raise DataError(
            f"data.num_eval: {num_eval} held-out prompts leave no training rows: {path!r} has {len(prompts)} usable "
            f"rows; pass --set data.num_eval={fits} (a fifth of them), or use a larger dataset"
        )
    return PromptSets(prompts[num_eval:], prompts[:num_eval])


FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def open_dataset(path: str, *, subset: str | None, split: str):
    """A ``datasets.Dataset``: a local file or directory when ``path`` exists on disk, else a hub dataset id.

    A path that looks like a file (a known suffix, or starting with ``.``, ``/`` or ``~``) but does not exist is an
    error here, not a hub lookup; so are an empty file and a hub id that cannot be loaded.
    """
    import datasets

    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix not in FILE_BUILDERS:
            raise DataError(f"data.path: {path!r} is not one of {sorted(FILE_BUILDERS)}; convert it to one of them")
        with open(p, "rb") as f:
            if not f.read(1 << 16).strip():
                raise DataError(f"data.path: {path!r} is empty; write one JSON object (or CSV row) per line")
        return _load(datasets.load_dataset, FILE_BUILDERS[p.suffix], path=path, data_files=str(p), split="train")
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(p))  # saved with save_to_disk
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    if not p.is_dir() and looks_like_a_file(path):
        raise DataError(
            f"data.path: {path!r} does not exist (relative paths are looked up beside the recipe, then in "
            f"{Path.cwd()}); fix the path, or give a hub dataset id such as 'openai/gsm8k'"
        )
    return _load(datasets.load_dataset, str(p) if p.is_dir() else path, subset, path=path, split=split)


def looks_like_a_file(path: str) -> bool:
    """Whether ``path`` is written as a local path rather than a hub id (``name`` or ``org/name``).

    >>> [looks_like_a_file(p) for p in ["mydata.jsonl", "./data", "~/x", "openai/gsm8k", "a/b/c", "gsm8k"]]
    [True, True, True, False, True, False]
    """
    return (
        Path(path).suffix.lower() in (*FILE_BUILDERS, ".txt", ".arrow")
        or path.startswith((".", "/", "~"))
        or path.count("/") > 1
    )


def _load(fn, *args, path: str, **kwargs):
    """``datasets`` loading with its failures turned into messages about ``data.path`` (the cause stays chained)."""
    import datasets

    try:
        return fn(*args, **kwargs)
    except datasets.exceptions.DatasetGenerationError as e:
        raise DataError(f"data.path: {path!r} could not be read ({e.__cause__ or e}); check the file's format") from e
    except (OSError, datasets.exceptions.DatasetNotFoundError) as e:  # ConnectionError, FileNotFoundError, ...
        raise DataError(
            f"data.path: {path!r} is not a local file or directory, and loading it from the Hugging Face Hub "
            f"failed ({type(e).__name__}: {str(e)[:300]}); fix the path or the hub id (and data.subset)"
        ) from e


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
