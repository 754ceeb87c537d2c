"""The one registry idiom used for advantage estimators, policy losses, KL estimators, rewards and backends.

>>> LOSSES = Registry("loss")
>>> @LOSSES.register("double")
... def double(x):
...     return 2 * x
>>> LOSSES.get("double")(3)
6
>>> LOSSES.get("tripple")
Traceback (most recent call last):
...
KeyError: "unknown loss 'tripple'; known: double"
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object table. Duplicate names raise (unless it is the same definition imported a second time, e.g.
    a module loaded both as part of its package and as a file by a test runner); unknown names raise listing the
    known ones.

    ``loader``, when given, is called once before the first lookup, listing or registration (e.g. importing the
    modules that register the built-ins), so a registry can be cheap to import and still complete when read."""

    def __init__(self, kind: str, *, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader

    def _load(self) -> None:
        loader, self._loader = self._loader, None  # cleared first: the modules it imports register into self
        if loader is not None:
            try:
                loader()
            except BaseException:
                self._loader = loader  # a failed load (an ImportError) is retried, and raises again, next time
                raise

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self._load()  # a name clashing with a not-yet-loaded built-in must fail here, not at the first lookup
        if name in self._items and _same_definition(self._items[name], obj):
            return
        if name in self._items:
            raise ValueError(f"duplicate {self.kind} name {name!r}: already registered as {self._items[name]!r}")
        self._items[name] = obj

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def check_signature(what: str, fn: Callable[..., object], positional: tuple[str, ...], keywords: set[str]) -> None:
    """Raise TypeError unless ``fn`` takes exactly ``positional`` (in order), then exactly ``keywords`` as keyword-only
    parameters, and no ``*args`` / ``**kwargs`` (which would accept a misspelled option silently).

    >>> def f(x, *, a, b=1): ...
    >>> check_signature("loss 'f'", f, ("x",), {"a", "b"})
    >>> check_signature("loss 'f'", f, ("x",), {"a", "c"})
    Traceback (most recent call last):
    ...
    TypeError: loss 'f': keywords ['a', 'b'] should be ['a', 'c'] (missing ['c'], undeclared ['b'])
    """
    params = inspect.signature(fn).parameters.values()
    got = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if got != positional:
        raise TypeError(f"{what}: takes positional {got}, should take {positional}")
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        raise TypeError(f"{what}: name every parameter (no *args / **kwargs), so none is accepted silently")
    names = {p.name for p in params if p.kind == p.KEYWORD_ONLY}
    if names != keywords:
        raise TypeError(
            f"{what}: keywords {sorted(names)} should be {sorted(keywords)} "
            f"(missing {sorted(keywords - names)}, undeclared {sorted(names - keywords)})"
        )


def _same_definition(a: object, b: object) -> bool:
    """Whether two objects come from the same ``def``/``class`` in the same file (a module imported twice)."""
    a, b = inspect.unwrap(a), inspect.unwrap(b)  # DetailedReward and other wrappers set __wrapped__
    try:
        same_file = inspect.getsourcefile(a) == inspect.getsourcefile(b) is not None
    except TypeError:  # builtins, instances without a source
        return False
    return same_file and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", object())
