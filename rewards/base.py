"""The reward interface.

A reward is a plain batch function, called by keyword exactly as TRL's ``GRPOTrainer(reward_funcs=...)`` calls it::

    def my_rule(prompts, completions, answer, **kwargs) -> list[float | None]

Each call passes ``prompts=``, ``completions=``, ``completion_ids=`` (the token ids of each completion), every
dataset column by name, ``trainer_state`` (a ``transformers.TrainerState``), ``log_metric(name, value)`` and
``log_extra(column, values)`` (``TRL_ARGS``); a function receives each of them only when it names it or takes
``**kwargs``, so both ``accuracy_reward(completions, solution, **kwargs)`` (open-r1) and
``f(prompts, completions, answer)`` work. When the data is conversational (``data.template: chat``) prompts are lists
of chat messages and each completion is ``[{"role": "assistant", "content": text}]``, as in TRL.

``None`` means *abstain*: the sample is left out of that reward (and, when every reward abstains, out of its
group's statistics). Parameters without a default that are not TRL's names are dataset columns; the trainer passes
them by name (``RewardSpec.columns`` renames them) and fails at start-up when the dataset lacks one.

A reward that also explains its verdicts (the extracted answer, the test outcomes) is registered with
``detailed=True``: it returns ``Scored`` records, and calling it still returns plain floats, so it stays a TRL
batch function.

>>> @register_reward("_doc_len_is_even")
... def even(prompts, completions, **kwargs):
...     return [float(len(c) % 2 == 0) for c in completions]
>>> REWARDS.get("_doc_len_is_even")(prompts=["p", "p"], completions=["ab", "abc"])
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
from types import ModuleType
from typing import Any

from core.registry import Registry

RewardFn = Callable[..., list]

TRL_ARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments")
"""What TRL's ``GRPOTrainer`` (trl 1.16, ``_calculate_rewards``) passes every reward besides the dataset columns.
None of them is a dataset column; r1kit passes all but ``environments`` (it has no environments)."""


@dataclass(frozen=True)
class Scored:
    """One verdict: ``value`` (``None`` abstains) and what explains it, for rollout inspection."""

    value: float | None
    info: dict[str, Any] = field(default_factory=dict)


class DetailedReward:
    """Wraps ``fn(prompts, completions, **cols) -> list[Scored]`` so that calling it returns plain values.

    Both are called with the arguments ``fn`` takes (by keyword, as TRL does; positional calls work too), and the
    wrapper shows ``fn``'s signature (``inspect.signature`` follows ``__wrapped__``)."""

    def __init__(self, fn: Callable[..., list[Scored]]) -> None:
        self.fn = fn
        update_wrapper(self, fn)

    def score(self, *args: Any, **kwargs: Any) -> list[Scored]:
        return self.fn(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        return [s.value for s in self.score(*args, **kwargs)]

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Pickled by reference, as a function is: ``register_reward(detailed=True)`` rebinds the module attribute to
        # this wrapper, so pickle's default (the wrapped function by module + name) would find the wrapper instead
        # and refuse - ruling out TRL's async reward workers and process pools. A wrapper that is not a module
        # attribute (built in a function) pickles its function instead, and its added attributes (``prepare``).
        if _importable_as(self, self.__module__, self.__qualname__):
            return _import_attr, (self.__module__, self.__qualname__)
        extra = {k: v for k, v in vars(self).items() if k not in _WRAPPER_STATE}
        return DetailedReward, (self.fn,), extra or None


_WRAPPER_STATE = frozenset({"fn", "__wrapped__", "__module__", "__name__", "__qualname__", "__doc__", "__dict__"})
"""What ``DetailedReward.__init__`` sets itself (``update_wrapper``): rebuilt on unpickling, not pickled."""


def _import_attr(module: str, qualname: str) -> Any:
    """The object ``module.qualname`` names (``qualname`` may be dotted): what a pickled reference unpickles to."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _importable_as(obj: Any, module: str, qualname: str) -> bool:
    if "<locals>" in qualname:
        return False
    try:
        return _import_attr(module, qualname) is obj
    except (ImportError, AttributeError):
        return False


def _import_builtin_rewards() -> None:
    # Done on the registry's first use, not at import: the built-ins pull in sympy and the code sandbox, and
    # `rewards.scoring` is imported by `r1kit config`, which must be quick. Importing a module registers its rewards;
    # adding them here too (a no-op then) also fills a second copy of this module, e.g. one a test runner loaded.
    import rewards

    for name, module in sorted(rewards.BUILTIN_REWARDS.items()):
        obj = getattr(importlib.import_module(module), name, None)
        if obj is not None:  # None: its module is the one being imported now; its decorator registers it next
            REWARDS.add(name, obj)


REWARDS: Registry[RewardFn] = Registry("reward", loader=_import_builtin_rewards)


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


def accepted_kwargs(fn: RewardFn, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The part of ``kwargs`` that ``fn`` accepts: all of it when ``fn`` takes ``**kwargs``, else what it names.

    >>> def f(completions, answer):
    ...     return [float(c == a) for c, a in zip(completions, answer)]
    >>> sorted(accepted_kwargs(f, {"prompts": ["q"], "completions": ["4"], "answer": ["4"], "trainer_state": None}))
    ['answer', 'completions']
    """
    if accepts_any_column(fn):
        return kwargs
    names = keyword_parameters(fn)
    return {k: v for k, v in kwargs.items() if k in names}


def score_detailed(fn: RewardFn, /, **kwargs: Any) -> Any:
    """Call any reward by keyword with what it accepts of ``kwargs`` and return ``Scored`` records (plain functions
    get empty info). A non-list result is returned as is, for ``rewards.scoring.check_output`` to reject.

    >>> def f(completions, **kwargs):
    ...     return [float(len(c)) for c in completions]
    >>> score_detailed(f, prompts=["q"], completions=["abc"], trainer_state=None)
    [Scored(value=3.0, info={})]
    """
    kwargs = accepted_kwargs(fn, kwargs)
    out = fn.score(**kwargs) if isinstance(fn, DetailedReward) else fn(**kwargs)
    if not isinstance(out, list | tuple):
        return out
    return [s if isinstance(s, Scored) else Scored(s) for s in out]


def load_reward(ref: str) -> RewardFn:
    """Resolve a registry name, ``package.module:function`` or ``path/to/file.py:function``."""
    if ":" not in ref:
        return REWARDS.get(ref)
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py") and not Path(target).is_file():
        raise FileNotFoundError(f"reward file {target!r} (from {ref!r}) does not exist")
    module = load_module(target)
    if not hasattr(module, attr):
        raise AttributeError(f"reward {ref!r}: {target!r} has no attribute {attr!r}")
    return getattr(module, attr)


def load_module(target: str) -> ModuleType:
    """Import ``package.module`` or the file ``path/to/file.py``.

    A file's folder goes to the front of ``sys.path`` (as Python does for a script), so that the file, and its
    functions when they run, can ``import`` modules lying beside it."""
    if not target.endswith(".py"):
        return importlib.import_module(target)
    path = Path(target).resolve()
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    mod_name = f"r1kit_user_reward_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _parameters(fn: RewardFn) -> list[inspect.Parameter] | None:
    """``fn``'s parameters, or None when Python cannot tell (some builtins): then it is passed everything, as TRL."""
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None


def required_columns(fn: RewardFn) -> list[str]:
    """Dataset columns a reward needs: its parameters without a default, other than the names TRL passes.

    >>> def accuracy_reward(completions, solution, **kwargs): ...  # open-r1's signature
    >>> required_columns(accuracy_reward)
    ['solution']
    """
    params = _parameters(fn) or []
    return [p.name for p in params if p.kind in _KEYWORD_KINDS and p.default is p.empty and p.name not in TRL_ARGS]


def keyword_parameters(fn: RewardFn) -> list[str]:
    """Every parameter ``fn`` takes by keyword, with a default or not."""
    return [p.name for p in _parameters(fn) or [] if p.kind in _KEYWORD_KINDS]


def positional_only_parameters(fn: RewardFn) -> list[str]:
    """Parameters without a default that cannot be passed by keyword (``def f(completions, /)``): never filled."""
    return [p.name for p in _parameters(fn) or [] if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]


def accepts_any_column(fn: RewardFn) -> bool:
    params = _parameters(fn)
    return params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
