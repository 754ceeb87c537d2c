"""The reward interface.

A reward is a plain batch function, the same object TRL's ``GRPOTrainer(reward_funcs=...)`` accepts::

    def my_rule(prompts: list[str], completions: list[str], answer: list[str], **kwargs) -> list[float | None]

``None`` means *abstain*: the sample is left out of that reward (and, when every reward abstains, out of its
group's statistics). Parameters after ``completions`` without a default are dataset columns; the trainer passes
them by name (``RewardSpec.columns`` renames them) and fails at start-up when the dataset lacks one.

A reward that also explains its verdicts (the extracted answer, the test outcomes) is registered with
``detailed=True``: it returns ``Scored`` records, and calling it still returns plain floats, so it stays a TRL
batch function.

>>> @register_reward("_doc_len_is_even")
... def even(prompts, completions, **kwargs):
...     return [float(len(c) % 2 == 0) for c in completions]
>>> REWARDS.get("_doc_len_is_even")(["p", "p"], ["ab", "abc"])
[1.0, 0.0]
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import update_wrapper
from pathlib import Path
from typing import Any

from rl.registry import Registry

RewardFn = Callable[..., list]


@dataclass(frozen=True)
class Scored:
    """One verdict: ``value`` (``None`` abstains) and what explains it, for rollout inspection."""

    value: float | None
    info: dict[str, Any] = field(default_factory=dict)


class DetailedReward:
    """Wraps ``fn(prompts, completions, **cols) -> list[Scored]`` so that calling it returns plain values."""

    def __init__(self, fn: Callable[..., list[Scored]]) -> None:
        self.fn = fn
        update_wrapper(self, fn)

    def score(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[Scored]:
        return self.fn(prompts, completions, **columns)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
        return [s.value for s in self.score(prompts, completions, **columns)]


REWARDS: Registry[RewardFn] = Registry("reward")


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text of one completion: a string as is, or the content of the last message of a conversation (what
    TRL passes for conversational datasets).

    >>> completion_text([{"role": "assistant", "content": "<answer>4</answer>"}])
    '<answer>4</answer>'
    """
    if isinstance(completion, str):
        return completion
    if (
        isinstance(completion, list | tuple)
        and completion
        and isinstance(completion[-1], dict)
        and isinstance(completion[-1].get("content"), str)
    ):
        return completion[-1]["content"]
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def completion_texts(completions: Sequence[Any]) -> list[str]:
    return [completion_text(c) for c in completions]


def register_reward(name: str, *, detailed: bool = False) -> Callable[[Callable], RewardFn]:
    """Register a batch reward under ``name``; ``detailed=True`` for functions returning ``Scored``."""

    def deco(fn: Callable) -> RewardFn:
        obj = DetailedReward(fn) if detailed else fn
        REWARDS.add(name, obj)
        return obj

    return deco


def score_detailed(fn: RewardFn, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[Scored]:
    """Call any reward and return ``Scored`` records (plain functions get empty info)."""
    if isinstance(fn, DetailedReward):
        return fn.score(prompts, completions, **columns)
    return [s if isinstance(s, Scored) else Scored(s) for s in fn(prompts, completions, **columns)]


def load_reward(ref: str) -> RewardFn:
    """Resolve a registry name, ``package.module:function`` or ``path/to/file.py:function``."""
    if ":" not in ref:
        _import_builtin_rewards()
        return REWARDS.get(ref)
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"reward file {target!r} (from {ref!r}) does not exist")
        mod_name = f"r1kit_user_reward_{abs(hash(path.resolve()))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, attr):
        raise AttributeError(f"reward {ref!r}: {target!r} has no attribute {attr!r}")
    return getattr(module, attr)


def required_columns(fn: RewardFn) -> list[str]:
    """Dataset columns a reward needs: its parameters after (prompts, completions) that have no default."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


def accepts_any_column(fn: RewardFn) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _import_builtin_rewards() -> None:
    # Importing registers them; done lazily so `rewards.base` stays importable on its own.
    import rewards  # noqa: F401
