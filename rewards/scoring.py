"""Binding rewards named in a recipe to a dataset, and scoring a batch with error accounting.

The trainer never calls a reward directly: it calls ``RewardScorer.score``, which calls each reward by keyword as
TRL does (``rewards.base``), checks its output, records failures (the failing samples abstain; the first traceback
is logged) and stops the run when more than ``rewards.max_error_fraction`` of a batch fails for one reward.

The total (``weighted_total``) is the weighted sum of the rewards' values, and a sample on which a weighted reward
has no value gets no total (None): it is left out of its group's advantage statistics and out of the loss, and
counted (``reward_missing``). Summing the others instead would score a crashed answer check beside a passing
format check 0.2 - exactly a wrong answer - and teach the policy that its (maybe right) answer was wrong. A reward
that abstains by design on samples it does not apply to (a multi-task mix: the math reward on code prompts) sets
``on_abstain: skip``: its abstentions then leave the others' sum standing, as TRL's ``nansum`` does. A reward that
raised on a sample drops it whatever ``on_abstain`` says: a crash is not a verdict.
"""

from __future__ import annotations

import difflib
import logging
import math
import traceback
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.metrics import Metric, Sum
from rewards.base import (
    REWARDS,
    TRL_ARGS,
    RewardFn,
    Scored,
    accepts_any_column,
    keyword_parameters,
    load_module,
    positional_only_parameters,
    required_columns,
    score_detailed,
)

log = logging.getLogger(__name__)


class RewardSetupError(ValueError):
    """A reward of the recipe cannot be bound (unknown name, missing file, module, attribute or dataset column);
    raised before any work, with a message naming the recipe key (``rewards.rules[<i>].name``) and the fix."""


class RewardOutputError(ValueError):
    """A reward returned something other than one finite float (or None) per completion."""


class RewardFailureError(RuntimeError):
    """Too many samples failed for one reward: the run stops rather than train on a broken signal."""


ON_ABSTAIN = ("drop", "skip")
"""``RewardSpec.on_abstain`` choices: a sample the reward abstains on gets no total, or the others' sum."""


@dataclass(frozen=True)
class RewardSpec:
    """One reward of a recipe: ``{name: math_accuracy, weight: 1.0, kwargs: {...}, columns: {answer: solution}}``."""

    name: str
    """Registry name, ``package.module:function`` or ``path/to/file.py:function``."""
    weight: float = 1.0
    """Weight of this reward in the total that advantages are computed from."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the reward on every call (e.g. ``{tolerance: 1e-6}``)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Renames: reward parameter -> dataset column (e.g. ``{answer: solution}``)."""
    alias: str | None = None
    """Name used in metrics and rollouts; defaults to ``name`` (set it to use one reward twice)."""
    init: dict[str, Any] | None = None
    """Makes ``name`` a reward factory: it is called once, by keyword, with these arguments and what it returns is
    the reward (e.g. ``{name: trl.rewards:get_soft_overlong_punishment, init: {max_completion_len: 64,
    soft_punish_cache: 16}}``). ``{}`` calls it without arguments; unset, ``name`` is the reward itself."""
    on_abstain: str = "drop"
    """What a sample this reward returned None for gets as its total: ``drop`` - none (it leaves its group's
    advantage and the loss; the default: an unknown verdict is not a zero), or ``skip`` - the weighted sum of the
    other rewards (TRL's rule; for rewards that apply to some samples only). A sample the reward raised on is
    always dropped. Ignored at weight 0."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("rewards[].name: must be a non-empty string (a registry name or module:function)")
        if not isinstance(self.weight, int | float) or not math.isfinite(self.weight):
            raise ValueError(f"rewards[{self.name}].weight: must be a finite number, got {self.weight!r}")
        if self.init is not None and not isinstance(self.init, dict):
            raise ValueError(f"rewards[{self.name}].init: must be a mapping of the factory's arguments")
        if self.on_abstain not in ON_ABSTAIN:
            raise ValueError(
                f"rewards[{self.name}].on_abstain: must be one of {list(ON_ABSTAIN)}, got {self.on_abstain!r}"
            )

    @property
    def label(self) -> str:
        return self.alias or self.name


@dataclass
class BoundReward:
    spec: RewardSpec
    fn: RewardFn
    column_map: dict[str, str]
    """reward parameter -> dataset column, for every column the reward receives."""

    def call(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        columns: Mapping[str, Sequence],
        *,
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_metric: Any = None,
    ) -> list[Scored]:
        """Call the reward by keyword as TRL does; ``completion_ids`` / ``trainer_state`` are passed when known.
        Values given to ``log_extra(column, values)`` (one per completion) join each sample's info."""
        extras: dict[str, list] = {}

        def log_extra(column: str, values: Sequence) -> None:
            extras[column] = list(values)

        kwargs: dict[str, Any] = {"prompts": list(prompts), "completions": list(completions), "log_extra": log_extra}
        if log_metric is not None:
            kwargs["log_metric"] = log_metric
        if completion_ids is not None:
            kwargs["completion_ids"] = [list(ids) for ids in completion_ids]
        if trainer_state is not None:
            kwargs["trainer_state"] = trainer_state
        kwargs.update({param: list(columns[col]) for param, col in self.column_map.items()})
        kwargs.update(self.spec.kwargs)
        out = check_output(self.spec.label, score_detailed(self.fn, **kwargs), len(completions))
        return with_extras(self.spec.label, out, extras)


def bind_rewards(specs: Sequence[RewardSpec], dataset_columns: Sequence[str]) -> list[BoundReward]:
    """Load every reward and check that the dataset provides the columns it needs (fails before any work).

    Errors are ``RewardSetupError`` naming the recipe key, ``rewards.rules[<i>]``, and the fix."""
    labels = [s.label for s in specs]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise RewardSetupError(
                f"rewards.rules[{i}].alias: reward {label!r} is listed twice (duplicate reward names {labels}); give "
                "repeated rewards distinct `alias` values"
            )
    available = set(dataset_columns)
    return [_bind(f"rewards.rules[{i}]", spec, available) for i, spec in enumerate(specs)]


def _bind(key: str, spec: RewardSpec, available: set[str]) -> BoundReward:
    fn = resolve_reward(key, spec)
    label, any_kw, named = spec.label, accepts_any_column(fn), keyword_parameters(fn)
    positional = positional_only_parameters(fn)
    if positional:
        raise RewardSetupError(
            f"{key}.name: reward {label!r} has positional-only parameter(s) {positional}; rewards are called by "
            "keyword, as TRL calls them: remove the `/` from its signature"
        )
    for what, given in (("kwargs", spec.kwargs), ("columns", spec.columns)):
        unknown = [k for k in given if not any_kw and k not in named]
        if unknown:
            raise RewardSetupError(
                f"{key}.{what}: reward {label!r} takes no parameter(s) {unknown} (it takes {named}); fix the "
                f"spelling or remove them from {key}.{what}"
            )
    needed = [p for p in [*required_columns(fn), *spec.columns] if p not in spec.kwargs]
    column_map = {p: spec.columns.get(p, p) for p in dict.fromkeys(needed)}
    missing = {p: c for p, c in column_map.items() if c not in available}
    if missing:
        p = next(iter(missing))
        hint = ""
        if not any_kw and not set(named) & set(TRL_ARGS):
            hint = (
                f". It takes none of the arguments TRL passes a reward ({', '.join(TRL_ARGS[:4])}, ...): if it is a "
                f"reward factory, call it with {key}.init; if it is a reward, name its parameters as TRL does"
            )
        raise RewardSetupError(
            f"{key}.columns: reward {label!r} needs dataset column(s) {sorted(missing.values())} which the dataset "
            f"lacks (it has {sorted(available)}); add them to the data or map them with {key}.columns "
            f"(e.g. {{{p}: <column>}}){hint}"
        )
    # Like TRL: optional parameters named after a column receive it, and a reward taking **kwargs receives every
    # column it did not name explicitly.
    taken = set(spec.kwargs) | set(TRL_ARGS) | {"prompt"}
    for p in named:
        if p not in column_map and p not in taken and p in available:
            column_map[p] = p
    if any_kw:
        for col in sorted(available - set(column_map.values()) - taken):
            column_map.setdefault(col, col)
    return BoundReward(spec, fn, column_map)


def resolve_reward(key: str, spec: RewardSpec) -> RewardFn:
    """The reward ``spec`` names (calling the factory with ``spec.init``), or a ``RewardSetupError`` saying why not."""
    obj = _lookup(key, spec.name)
    if spec.init is not None:
        if not callable(obj):
            raise RewardSetupError(f"{key}.init: {spec.name!r} is a {type(obj).__name__}, not a factory to call")
        try:
            obj = obj(**spec.init)
        except (TypeError, ValueError) as e:
            raise RewardSetupError(
                f"{key}.init: calling {spec.name!r} with {spec.init} raised {type(e).__name__}: {e}; set init to the "
                "factory's arguments"
            ) from e
        if not callable(obj):
            raise RewardSetupError(
                f"{key}.init: {spec.name!r} returned a {type(obj).__name__}, not a reward function; is it a factory?"
            )
    elif not callable(obj):
        raise RewardSetupError(f"{key}.name: {spec.name!r} is a {type(obj).__name__}, not a reward function")
    return obj


def _lookup(key: str, name: str) -> Any:
    if ":" not in name:
        if name not in REWARDS:
            close = difflib.get_close_matches(name, REWARDS.names(), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise RewardSetupError(
                f"{key}.name: unknown reward {name!r}; {guess}Known: {', '.join(REWARDS.names())}. For your own "
                "reward give 'package.module:function' or 'path/to/file.py:function'"
            )
        return REWARDS.get(name)
    target, _, attr = name.rpartition(":")
    if target.endswith(".py") and not Path(target).is_file():
        raise RewardSetupError(
            f"{key}.name: reward file {target!r} does not exist (relative paths start from the current directory, "
            f"{Path.cwd()}); fix the path in {name!r}"
        )
    try:
        module = load_module(target)
    except ModuleNotFoundError as e:
        if e.name is None or not (target == e.name or target.startswith(e.name + ".")):
            raise  # the module exists but one of its own imports failed: that traceback is the one to read
        raise RewardSetupError(
            f"{key}.name: no module named {e.name!r} (from {name!r}); fix the spelling or install the package, or "
            "give a file as 'path/to/file.py:function'"
        ) from None
    if not hasattr(module, attr):
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, public, n=1)
        guess = f"; did you mean {close[0]!r}?" if close else f"; it defines {sorted(public)}"
        raise RewardSetupError(f"{key}.name: {target!r} has no attribute {attr!r} (from {name!r}){guess}")
    return getattr(module, attr)


def check_output(label: str, out: Any, n: int) -> list[Scored]:
    if not isinstance(out, list | tuple):
        got = "None" if out is None else f"a {type(out).__name__}"
        raise RewardOutputError(
            f"reward {label!r} returned {got}; it must return a list with one float (or None to abstain) per "
            "completion"
        )
    if len(out) != n:
        raise RewardOutputError(f"reward {label!r} returned {len(out)} values for {n} completions")
    checked = []
    for i, s in enumerate(out):
        v = s.value
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise RewardOutputError(
                    f"reward {label!r} returned {v!r} at index {i}; each value must be a finite float or None"
                )
            s = Scored(float(v), s.info)
        checked.append(s)
    return checked


def with_extras(label: str, scored: list[Scored], extras: Mapping[str, Sequence]) -> list[Scored]:
    """``scored`` with each ``log_extra`` column's value for the sample added to its info (stored with rollouts).

    >>> with_extras("r", [Scored(1.0, {"a": 1})], {"golden_answer": ["4"]})
    [Scored(value=1.0, info={'a': 1, 'golden_answer': '4'})]
    """
    for column, values in extras.items():
        if len(values) != len(scored):
            raise RewardOutputError(
                f"reward {label!r} logged {len(values)} values of {column!r} for {len(scored)} completions; "
                "log_extra takes one value per completion"
            )
    if not extras:
        return scored
    return [Scored(s.value, {**s.info, **{c: v[i] for c, v in extras.items()}}) for i, s in enumerate(scored)]


@dataclass(frozen=True)
class RewardColumn:
    """One reward's verdicts on a batch of completions, in batch order.

    >>> col = RewardColumn("acc", (1.0, None), ({}, {"error": "ValueError: bad"}), errors=("ValueError: bad",))
    >>> col.mean, col.abstain_frac, col.n_errors
    (1.0, 0.5, 1)
    """

    label: str
    """The reward's name in metrics and rollouts (``RewardSpec.label``)."""
    values: tuple[float | None, ...]
    """One per completion; None = abstained (the reward returned None, or raised on that sample)."""
    info: tuple[dict[str, Any], ...]
    """One per completion: what the reward reported about it (stored with rollouts as ``reward_info/<label>``);
    ``{"error": "<Type>: <message>"}`` where it raised."""
    errors: tuple[str, ...] = ()
    """The message of each sample the reward raised on, in batch order (those samples abstain)."""

    def __post_init__(self) -> None:
        if len(self.values) != len(self.info):
            raise ValueError(f"RewardColumn({self.label!r}): {len(self.values)} values but {len(self.info)} infos")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    @property
    def failed(self) -> tuple[bool, ...]:
        """Per completion: whether the reward raised on it (its info's ``error`` is one of ``errors``; a reward's own
        ``error`` notes, e.g. the code rewards' "no program found", are not failures).

        >>> RewardColumn("a", (None, None), ({"error": "E: x"}, {"error": "no program found"}), ("E: x",)).failed
        (True, False)
        """
        raised = set(self.errors)
        return tuple(v is None and i.get("error") in raised for v, i in zip(self.values, self.info, strict=True))

    @property
    def present(self) -> list[float]:
        """The values of the completions the reward did not abstain on."""
        return [v for v in self.values if v is not None]

    @property
    def mean(self) -> float:
        """Mean over the completions the reward did not abstain on; NaN when it abstained on all."""
        present = self.present
        return sum(present) / len(present) if present else math.nan

    @property
    def abstain_frac(self) -> float:
        return 1 - len(self.present) / max(len(self.values), 1)


@dataclass(frozen=True)
class RewardScores:
    """Every reward's verdicts on one batch of completions, and their weighted total, in batch order.

    >>> s = RewardScores.weighted([RewardColumn("a", (1.0, None), ({}, {})), RewardColumn("b", (0.5, 1.0), ({}, {}))],
    ...                           {"a": 2.0, "b": 1.0})
    >>> s.total, s["b"].values, s.labels
    ((2.5, None), (0.5, 1.0), ['a', 'b'])
    """

    rewards: tuple[RewardColumn, ...]
    """One column per reward of the recipe, in recipe order."""
    total: tuple[float | None, ...]
    """The weighted sum (``weighted_total``); None where a weighted reward abstained (``on_abstain: drop``) or raised,
    or where every reward abstained."""

    def __post_init__(self) -> None:
        labels = self.labels
        if len(set(labels)) != len(labels):
            raise ValueError(f"RewardScores: duplicate reward labels {labels}")
        bad = [c.label for c in self.rewards if len(c) != len(self.total)]
        if bad:
            raise ValueError(f"RewardScores: reward(s) {bad} do not have one value per completion ({len(self.total)})")

    @classmethod
    def weighted(
        cls,
        rewards: Sequence[RewardColumn],
        weights: Mapping[str, float],
        on_abstain: Mapping[str, str] | None = None,
    ) -> RewardScores:
        """The scores of ``rewards`` with their total under ``weights`` (label -> weight) and ``on_abstain`` (label
        -> ``RewardSpec.on_abstain``; a label not given: ``drop``)."""
        on_abstain = on_abstain or {}
        total = weighted_total(
            {c.label: c.values for c in rewards},
            weights,
            skip={c.label for c in rewards if on_abstain.get(c.label, "drop") == "skip"},
            failed={c.label: c.failed for c in rewards},
        )
        return cls(tuple(rewards), tuple(total))

    @classmethod
    def concat(cls, parts: Sequence[RewardScores]) -> RewardScores:
        """One batch's scores from several batches' (same rewards), rows in order: e.g. dynamic sampling's rounds,
        or every process's share of a step."""
        columns = [
            RewardColumn(
                c.label,
                tuple(v for p in parts for v in p[c.label].values),
                tuple(i for p in parts for i in p[c.label].info),
                tuple(e for p in parts for e in p[c.label].errors),
            )
            for c in parts[0].rewards
        ]
        return cls(tuple(columns), tuple(t for p in parts for t in p.total))

    def __len__(self) -> int:
        return len(self.total)

    def __getitem__(self, label: str) -> RewardColumn:
        for c in self.rewards:
            if c.label == label:
                return c
        raise KeyError(f"no reward {label!r} in these scores; they hold {self.labels}")

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.rewards]

    def metrics(self) -> dict[str, float | Metric]:
        """Per reward: its mean over non-abstained completions, the share it abstained on, and its error count (a
        count: summed over processes); and the completions with no total, which train on nothing (a count, and
        their share of the batch).

        >>> RewardScores.weighted([RewardColumn("a", (1.0, None), ({}, {"error": "E: x"}), ("E: x",))], {"a": 1.0}
        ...                       ).metrics()  # doctest: +NORMALIZE_WHITESPACE
        {'reward/a': 1.0, 'reward/a/abstain_frac': 0.5, 'reward/a/errors': Metric(value=1, reduce='sum'),
         'reward_missing': Metric(value=1, reduce='sum'), 'reward_missing_frac': 0.5}
        """
        out: dict[str, float | Metric] = {}
        for c in self.rewards:
            out[f"reward/{c.label}"] = c.mean
            out[f"reward/{c.label}/abstain_frac"] = c.abstain_frac
            out[f"reward/{c.label}/errors"] = Sum(c.n_errors)
        missing = sum(t is None for t in self.total)
        out["reward_missing"] = Sum(missing)
        out["reward_missing_frac"] = missing / max(len(self.total), 1)
        return out


class RewardScorer:
    """Scores batches with the bound rewards. Built at start-up: a reward function with a ``prepare`` attribute
    (a no-argument callable) has it called here, once, so that what it depends on fails the run before the model
    loads (the code rewards probe the sandbox this way)."""

    def __init__(self, bound: Sequence[BoundReward], *, max_error_fraction: float = 0.1) -> None:
        self.bound = list(bound)
        for b in self.bound:
            prepare = getattr(b.fn, "prepare", None)
            if callable(prepare):
                prepare()
        self.max_error_fraction = max_error_fraction
        self.error_counts = {b.spec.label: 0 for b in self.bound}
        self._logged: set[str] = set()
        self._metrics: defaultdict[str, list[float]] = defaultdict(list)

    def log_metric(self, name: str, value: float) -> None:
        """TRL's ``log_metric``, handed to every reward: a scalar averaged over the step (see ``pop_metrics``)."""
        self._metrics[name].append(float(value))

    def pop_metrics(self) -> dict[str, float]:
        """The mean of each ``log_metric`` name since the last call; the trainer adds them to the step's metrics.

        >>> scorer = RewardScorer([])
        >>> scorer.log_metric("judge/calls", 2); scorer.log_metric("judge/calls", 4)
        >>> scorer.pop_metrics(), scorer.pop_metrics()
        ({'judge/calls': 3.0}, {})
        """
        out = {name: sum(v) / len(v) for name, v in self._metrics.items()}
        self._metrics.clear()
        return out

    def score(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        columns: Mapping[str, Sequence],
        *,
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
    ) -> RewardScores:
        """Score a batch: prompts and completions as the rewards receive them (text, or chat messages for a
        conversational dataset), ``columns`` one value per completion, ``completion_ids`` each completion's token ids
        and ``trainer_state`` a ``transformers.TrainerState`` (both passed on when given)."""
        verdicts: list[RewardColumn] = []
        extra = {"completion_ids": completion_ids, "trainer_state": trainer_state}
        for b in self.bound:
            scored, errors = self._score_one(b, prompts, completions, columns, **extra)
            label, n_err = b.spec.label, len(errors)
            verdicts.append(RewardColumn(label, tuple(x.value for x in scored), tuple(x.info for x in scored), errors))
            self.error_counts[label] += n_err
            if len(completions) and n_err / len(completions) > self.max_error_fraction:
                raise RewardFailureError(
                    f"reward {label!r} failed on {n_err}/{len(completions)} samples, above "
                    f"rewards.max_error_fraction={self.max_error_fraction}; fix the reward (its first traceback is "
                    "in the log above), or raise rewards.max_error_fraction if such failures are expected"
                )
        return RewardScores.weighted(
            verdicts,
            {b.spec.label: b.spec.weight for b in self.bound},
            {b.spec.label: b.spec.on_abstain for b in self.bound},
        )

    def _score_one(
        self, b: BoundReward, prompts, completions, columns, *, completion_ids, trainer_state
    ) -> tuple[list[Scored], tuple[str, ...]]:
        """The reward's verdicts and the error message of each sample it raised on (those abstain)."""
        kw = {"trainer_state": trainer_state, "log_metric": self.log_metric}
        try:
            return b.call(prompts, completions, columns, completion_ids=completion_ids, **kw), ()
        except RewardOutputError:
            raise
        except Exception:  # user code: record, then isolate the failing samples one by one
            self._log_first(b.spec.label)
        scored, errors = [], []
        for i in range(len(completions)):
            row = {k: [v[i]] for k, v in columns.items()}
            ids = None if completion_ids is None else [completion_ids[i]]
            try:
                scored.extend(b.call([prompts[i]], [completions[i]], row, completion_ids=ids, **kw))
            except RewardOutputError:
                raise
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                scored.append(Scored(None, {"error": errors[-1]}))
        return scored, tuple(errors)

    def _log_first(self, label: str) -> None:
        if label not in self._logged:
            self._logged.add(label)
            log.error("reward %r raised; failing samples abstain. First traceback:\n%s", label, traceback.format_exc())


def trainer_state(*, global_step: int, max_steps: int) -> Any:
    """The ``transformers.TrainerState`` TRL hands rewards as ``trainer_state``: steps done so far and the total.

    >>> s = trainer_state(global_step=3, max_steps=10)
    >>> type(s).__name__, s.global_step, s.max_steps
    ('TrainerState', 3, 10)
    """
    from transformers import TrainerState  # here: transformers.trainer_callback imports peft (seconds)

    return TrainerState(global_step=global_step, max_steps=max_steps)


def weighted_total(
    values: Mapping[str, Sequence[float | None]],
    weights: Mapping[str, float],
    *,
    skip: Collection[str] = (),
    failed: Mapping[str, Sequence[bool]] | None = None,
) -> list[float | None]:
    """Per sample, the sum of ``weight * value`` over the rewards, or None (no total: the sample trains on nothing)
    when a reward of non-zero weight has no value for it - unless that reward is in ``skip`` (``on_abstain: skip``)
    and did not fail (``failed``: label -> per sample, whether the reward raised) - or when every reward abstained.

    >>> v = {"acc": [1.0, None, None, None], "fmt": [1.0, 1.0, 1.0, None]}
    >>> weighted_total(v, {"acc": 1.0, "fmt": 0.2})  # acc abstained on 1-3: no total (not 0.2, a wrong answer's)
    [1.2, None, None, None]
    >>> weighted_total(v, {"acc": 1.0, "fmt": 0.2}, skip={"acc"}, failed={"acc": [False, False, True, False]})
    [1.2, 0.2, None, None]
    >>> weighted_total(v, {"acc": 0.0, "fmt": 0.2})  # a weight-0 reward (logged only) never drops a sample
    [0.2, 0.2, 0.2, None]
    """
    n = len(next(iter(values.values()), []))
    failed = failed or {}
    out: list[float | None] = []
    for i in range(n):
        missing = [
            k
            for k, v in values.items()
            if v[i] is None and weights[k] != 0 and (k not in skip or (k in failed and failed[k][i]))
        ]
        parts = [weights[k] * v[i] for k, v in values.items() if v[i] is not None]
        out.append(sum(parts) if parts and not missing else None)
    return out
