"""Score stored rollouts with rewards, exactly as the trainer would: try a new rule on real completions first.

>>> import pandas as pd
>>> df = pd.DataFrame({"prompt": ["Q: 1+2", "Q: 1+2"], "data/answer": ["3", "3"],
...                    "completion": ["<think>1+2=3</think><answer>3</answer>", "<answer>4</answer>"]})
>>> rescore(df, [RewardSpec("math_accuracy")])[["reward", "reward/math_accuracy"]].values.tolist()
[[1.0, 1.0], [0.0, 0.0]]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rewards.scoring import RewardScorer, RewardSpec, bind_rewards
from rollouts.store import to_json

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def dataset_columns(df: pd.DataFrame) -> dict[str, list]:
    """The stored dataset columns (``data/<name>``) under their dataset names, as rewards receive them."""
    return {c.removeprefix("data/"): df[c].tolist() for c in df.columns if c.startswith("data/")}


def rescore(df: pd.DataFrame, specs: Sequence[RewardSpec], *, max_error_fraction: float = 1.0) -> pd.DataFrame:
    """``reward``, ``reward/<label>`` and ``reward_info/<label>`` of ``df``'s completions under ``specs``.

    ``specs`` are what a recipe's ``rewards.rules`` lists: registry names, ``module:function`` or
    ``path/to/file.py:function`` (so a rule tried here is referenced in the recipe the same way), with weights.
    Failing samples abstain and are counted as in training; by default no failure share stops the scoring
    (``max_error_fraction=1``). The result shares ``df``'s index. The rewards receive the stored ``completion_ids``
    as in training, so lengths are tokens (rollouts stored before that column existed: characters, with a warning).
    """
    import pandas as pd

    columns = dataset_columns(df)
    scorer = RewardScorer(bind_rewards(specs, list(columns)), max_error_fraction=max_error_fraction)
    ids = completion_ids(df)
    scores = scorer.score(df["prompt"].tolist(), df["completion"].tolist(), columns, completion_ids=ids)
    out = pd.DataFrame({"reward": _floats(scores.total)}, index=df.index)
    for spec in specs:
        out[f"reward/{spec.label}"] = _floats(scores[spec.label].values)
        out[f"reward_info/{spec.label}"] = [to_json(i) for i in scores[spec.label].info]
    return out


def completion_ids(df: pd.DataFrame) -> list[list[int]] | None:
    """The stored token ids of each completion as lists of ints (Parquet gives numpy arrays), or None (with a
    warning) when ``df`` has none for some row: length rewards then count characters, not training's tokens.

    >>> import numpy as np, pandas as pd
    >>> completion_ids(pd.DataFrame({"completion_ids": [np.array([5, 6], dtype=np.int32), np.array([], np.int32)]}))
    [[5, 6], []]
    """
    if "completion_ids" not in df.columns or df["completion_ids"].isna().any():
        log.warning(
            "rescore: these rollouts have no completion_ids (stored before r1kit kept them); length rewards "
            "(overlong_penalty, cosine_length, len_reward) count characters here, where training counted tokens"
        )
        return None
    return [[int(t) for t in ids] for ids in df["completion_ids"]]


def _floats(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]
