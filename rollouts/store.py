"""Rollouts as data: every sampled completion, its reward breakdown and advantage, one Parquet file per step.

Layout of a run directory::

    RUN/rollouts/step-000012.parquet     one row per completion of step 12 (steps count from 1, as metrics.jsonl)

Columns (one row per completion):

    step, group_id, prompt_id, prompt, completion     ints / text
    reward                                            weighted total; null when there is none (a weighted reward
                                                      abstained or failed: ``rewards.scoring.weighted_total``)
    reward/<name>, reward_info/<name>                 each reward's value (null = abstained) and its info as JSON
    advantage, num_tokens, finish_reason              finish_reason: eos, stop (a ``rollout.stop`` string) or length
    completion_ids                                    the completion's token ids (no prompt, no padding), as the
                                                      rewards received them: ``rollouts.rescore`` passes them again
    mean_logprob                                      the r1kit sampler's mean log-prob (null with ``generate``)
    data/<column>                                     the dataset columns rewards read (e.g. data/answer)
    <extra>                                           per-completion columns the trainer adds: ``kept`` (False for
                                                      groups DAPO dynamic sampling dropped: advantage 0, no update)
                                                      and ``train_mean_logprob`` (the old policy's mean log-prob
                                                      under the training forward; null for dropped groups)

Files are written atomically (temp file + fsync + rename), so a run killed mid-step leaves every earlier step
readable and the loader never sees half a file. Open a run with ``rollouts.load(run_dir)`` (pandas) or
``rollouts.load_dataset(run_dir)`` (``datasets``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.files import atomic_write
from rollouts.records import RolloutBatch

if TYPE_CHECKING:  # pyarrow (~30 MB resident) is imported where a file is written or read, not by the trainer's import
    import datasets
    import pandas as pd
    import pyarrow as pa
    import torch

    from rewards.scoring import RewardScores

ROLLOUTS_DIR = "rollouts"
_STEP_FILE = re.compile(r"step-(\d+)\.parquet")


def step_path(run_dir: str | Path, step: int) -> Path:
    """
    >>> step_path("runs/x", 12).as_posix()
    'runs/x/rollouts/step-000012.parquet'
    """
    return Path(run_dir) / ROLLOUTS_DIR / f"step-{step:06d}.parquet"


def stored_steps(run_dir: str | Path) -> list[int]:
    """Steps with a complete rollout file, ascending. Temp files of a write in progress are not listed."""
    folder = Path(run_dir) / ROLLOUTS_DIR
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_FILE.fullmatch(p.name)))


def to_json(v: Any) -> str:
    """How infos and odd dataset values are stored: stable key order, readable unicode."""
    return json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)


def _column(values: list[Any]) -> pa.Array:
    """A dataset column as Arrow: native when the values share a type, else JSON text (e.g. mixed test cases)."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else to_json(v) for v in values], pa.string())


def rollout_table(
    step: int,
    batch: RolloutBatch,
    scores: RewardScores,
    adv_B: torch.Tensor | Sequence[float],
    *,
    max_groups: int | None = None,
    extra: Mapping[str, Sequence[Any]] | None = None,
) -> pa.Table:
    """One row per completion of ``batch`` (the first ``max_groups`` groups when set, whole groups only).

    ``extra`` adds columns, one value per completion of the whole batch (the trainer's ``kept`` and
    ``train_mean_logprob``).
    """
    import pyarrow as pa

    adv = [float(a) for a in (adv_B.tolist() if hasattr(adv_B, "tolist") else adv_B)]
    n = len(batch)
    for name, vals in {"advantages": adv, "total rewards": scores.total, **(extra or {})}.items():
        if len(vals) != n:
            raise ValueError(f"rollout_table: {len(vals)} {name} for {n} completions")
    keep_groups = list(dict.fromkeys(batch.group_ids))[:max_groups]
    kept = set(keep_groups)
    rows = [i for i, c in enumerate(batch.completions) if c.group_id in kept]
    comps = [batch.completions[i] for i in rows]
    cols: dict[str, pa.Array] = {
        "step": pa.array([step] * len(rows), pa.int64()),
        "group_id": pa.array([c.group_id for c in comps], pa.int64()),
        "prompt_id": pa.array([c.prompt.prompt_id for c in comps], pa.string()),
        "prompt": pa.array([c.prompt.text for c in comps], pa.string()),
        "completion": pa.array([c.text for c in comps], pa.string()),
        "reward": pa.array([scores.total[i] for i in rows], pa.float64()),
    }
    for reward in scores.rewards:
        cols[f"reward/{reward.label}"] = pa.array([reward.values[i] for i in rows], pa.float64())
        cols[f"reward_info/{reward.label}"] = pa.array([to_json(reward.info[i]) for i in rows], pa.string())
    cols["advantage"] = pa.array([adv[i] for i in rows], pa.float64())
    cols["num_tokens"] = pa.array([c.num_tokens for c in comps], pa.int64())
    cols["completion_ids"] = pa.array([list(c.token_ids) for c in comps], pa.list_(pa.int32()))  # vocab < 2**31
    cols["finish_reason"] = pa.array([c.finish_reason for c in comps], pa.string())
    cols["mean_logprob"] = pa.array([_mean(c.logprobs) for c in comps], pa.float64())
    for name in sorted({k for c in comps for k in c.prompt.columns}):
        cols[f"data/{name}"] = _column([c.prompt.columns.get(name) for c in comps])
    for name, vals in (extra or {}).items():
        cols[name] = _column([vals[i] for i in rows])
    return pa.table(cols)


def _mean(xs: Sequence[float] | None) -> float | None:
    return sum(xs) / len(xs) if xs else None


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` as Parquet atomically (see ``core.files.atomic_write``)."""
    import pyarrow.parquet as pq

    atomic_write(path, lambda f: pq.write_table(table, f))


class RolloutStore:
    """Writes a step's rollouts to ``RUN/rollouts`` every ``every`` steps (0 = never), ``max_groups`` at most."""

    def __init__(self, run_dir: str | Path, *, every: int = 1, max_groups: int | None = None) -> None:
        self.run_dir, self.every, self.max_groups = Path(run_dir), every, max_groups

    def wants(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def write(
        self,
        step: int,
        batch: RolloutBatch,
        scores: RewardScores,
        adv_B: torch.Tensor | Sequence[float],
        *,
        extra: Mapping[str, Sequence[Any]] | None = None,
    ) -> Path | None:
        """Store ``step``'s rollouts (replacing a file a resumed run left for the same step); None when sampled out."""
        if not self.wants(step):
            return None
        path = step_path(self.run_dir, step)
        write_table_atomic(rollout_table(step, batch, scores, adv_B, max_groups=self.max_groups, extra=extra), path)
        return path

    def truncate_after(self, step: int) -> None:
        """On resume: drop files of steps the restored checkpoint does not contain (they will be re-run)."""
        for s in stored_steps(self.run_dir):
            if s > step:
                step_path(self.run_dir, s).unlink(missing_ok=True)


def _select(run_dir: str | Path, steps: int | Iterable[int] | None) -> list[Path]:
    available = stored_steps(run_dir)
    if steps is None:
        wanted = available
    else:
        asked = [steps] if isinstance(steps, int) else list(steps)
        missing = sorted(set(asked) - set(available))
        if missing:
            raise FileNotFoundError(
                f"no rollouts stored for step(s) {missing} in {Path(run_dir) / ROLLOUTS_DIR}; stored: "
                f"{_ranges(available) or 'none'} (logging.rollouts_every sets which steps are kept)"
            )
        wanted = sorted(set(asked))
    return [step_path(run_dir, s) for s in wanted]


def _ranges(steps: list[int]) -> str:
    """
    >>> _ranges([1, 2, 3, 5, 7, 8])
    '1-3, 5, 7-8'
    """
    out: list[str] = []
    for s in steps:
        if out and s == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ", ".join(out)


def load(run_dir: str | Path, steps: int | Iterable[int] | None = None) -> pd.DataFrame:
    """Stored rollouts of a run (all steps, or ``steps``) as one DataFrame, in step then batch order.

    Works on a run still being written: only complete files are read. Steps whose files lack a column (a reward
    added later, sampling extras) get nulls there.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    paths = _select(run_dir, steps)
    if not paths:
        raise FileNotFoundError(
            f"no rollouts stored in {Path(run_dir) / ROLLOUTS_DIR} (is it a run directory? rollouts are written "
            f"every logging.rollouts_every steps)"
        )
    frames = [pq.read_table(p).to_pandas() for p in paths]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def load_dataset(run_dir: str | Path, steps: int | Iterable[int] | None = None) -> datasets.Dataset:
    """``load`` as a Hugging Face ``datasets.Dataset`` (filter, map, push_to_hub, ...)."""
    import datasets

    return datasets.Dataset.from_pandas(load(run_dir, steps), preserve_index=False)


def reward_names(df: pd.DataFrame) -> list[str]:
    """The rewards recorded in a rollouts frame, in column order (``reward/<name>`` columns)."""
    return [c.removeprefix("reward/") for c in df.columns if c.startswith("reward/")]


def reward_info(df: pd.DataFrame, name: str) -> pd.Series:
    """One reward's info per row, decoded from JSON (dicts; an abstaining reward's info may be empty)."""
    return df[f"reward_info/{name}"].map(lambda s: json.loads(s) if isinstance(s, str) else {})
