"""Strict mapping of nested dicts (recipe YAML) onto frozen dataclasses, and back.

Unknown keys, wrong types and missing required values fail naming the full key (``algorithm.num_generations``) and,
for misspellings, the closest known key. Validation of values lives in each dataclass's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A recipe value is unknown, mistyped or impossible; the message names the key and the fix."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "3e-5" (no dot) as a string: accept what float() accepts
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config field type {tp}")


def _unknown_key(cls: type, keys: typing.Iterable[str], prefix: str) -> ConfigError | None:
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    for k in keys:
        if k not in fields:
            close = difflib.get_close_matches(k, fields, n=1)
            hint = f"; did you mean {_join(prefix, close[0])!r}?" if close else f"; known keys: {sorted(fields)}"
            return ConfigError(f"unknown key {_join(prefix, k)!r}{hint}")
    return None


def _dataclass_in(tp: Any) -> tuple[type | None, bool]:
    """(the dataclass a field's type holds, whether as list items): ``Foo``, ``Foo | None``, ``list[Foo]``."""
    if _is_dataclass_type(tp):
        return tp, False
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        found = [a for a in args if _is_dataclass_type(a)]
        return (found[0], False) if found else (None, False)
    if origin in (list, tuple) and args and _is_dataclass_type(args[0]):
        return args[0], True
    return None, False


def check_keys(cls: type, data: Any, prefix: str = "") -> None:
    """Fail on the first unknown key anywhere in ``data`` before any value is converted or validated.

    Validation may import heavy modules (a loss name is checked against the loss registry, which needs torch);
    a misspelt key is found without them, in milliseconds.
    """
    if not isinstance(data, dict):
        return
    err = _unknown_key(cls, data, prefix)
    if err:
        raise err
    hints = get_type_hints(cls)
    for name, value in data.items():
        inner, as_list = _dataclass_in(hints[name])
        if inner is None:
            continue
        if as_list and isinstance(value, list | tuple):
            for i, item in enumerate(value):
                check_keys(inner, item, f"{_join(prefix, name)}[{i}]")
        elif not as_list:
            check_keys(inner, value, _join(prefix, name))


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    err = _unknown_key(cls, data, prefix)
    if err:
        raise err
    kwargs = {name: _convert(v, hints[name], _join(prefix, name)) for name, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # __post_init__ validation: name the section
        raise ConfigError(f"{prefix + '.' if prefix and not str(e).startswith(prefix) else ''}{e}") from None
    except TypeError:
        missing = [f for f, spec in fields.items() if f not in data and _required(spec)]
        if missing:
            raise ConfigError(f"{_join(prefix, missing[0])}: required, but the recipe does not set it") from None
        raise


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list tree (for saving the resolved config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML scalars) to a nested dict, in place; returns it.

    >>> apply_overrides({"algorithm": {"loss": "grpo"}}, ["algorithm.loss=gspo", "training.max_steps=5"])
    {'algorithm': {'loss': 'gspo'}, 'training': {'max_steps': 5}}
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set algorithm.num_generations=16")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def read_yaml_mapping(path: str | Path, what: str, sections: str) -> dict[str, Any]:
    """The mapping a YAML file holds (empty file: {}); a ``ConfigError`` naming ``what`` (``recipe``, ``pipeline``)
    when the file is missing, not YAML, or not a mapping of ``sections``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(p)!r}: the top level must be a mapping of {sections}")
    return data
