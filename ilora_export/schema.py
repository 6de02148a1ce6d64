"""Validating plain data (parsed YAML or JSON) into dataclasses, every problem collected at once.

Types come from :func:`typing.get_type_hints` (``int``, ``float``, ``str``, ``bool``, ``list[X]``,
``dict[str, X]``, ``dict``, ``X | None`` and nested dataclasses), value rules from field metadata
written with :func:`opt`. A dataclass may define a static ``_cross_check(values)`` yielding
``(field, problem)`` pairs for rules between fields. Problems are strings ``"dotted.key: problem"``;
the caller decides how to raise them (recipes and checkpoint configs use the same rules).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

__all__ = ["NO_VALUE", "build", "close_key", "describe", "join", "opt"]

#: what :func:`build` returns for a value with a problem
NO_VALUE = object()

#: (unknown key, section prefix, known keys of the section) -> the problem text
UnknownKey = Callable[[str, str, Sequence[str]], str]


def _rules(
    *,
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    nonempty: bool = False,
) -> dict[str, Any]:
    """Field metadata checked by the validator once the value has the right type."""
    rules: dict[str, Any] = {}
    if choices is not None:
        rules["choices"] = tuple(choices)
    for name, bound in (("ge", ge), ("gt", gt), ("lt", lt)):
        if bound is not None:
            rules[name] = bound
    if nonempty:
        rules["nonempty"] = True
    return rules


def opt(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with a default (or ``factory``) and value rules: ``choices``, ``ge``, ``gt``,
    ``lt``, ``nonempty``."""
    return dataclasses.field(default=default, default_factory=factory, metadata=_rules(**rules))


def describe(value: Any) -> str:
    """``a string ('eight')``: a value's kind and (shortened) text, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind = "a boolean"
        shown = "true" if value else "false"
    elif isinstance(value, int):
        kind, shown = "an integer", repr(value)
    elif isinstance(value, float):
        kind, shown = "a number", repr(value)
    elif isinstance(value, str):
        kind, shown = "a string", repr(value)
    elif isinstance(value, list):
        kind, shown = "a list", repr(value)
    elif isinstance(value, Mapping):
        kind, shown = "a mapping", repr(dict(value))
    else:
        kind, shown = type(value).__name__, repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} ({shown})"


def _expected(tp: Any) -> str:
    if _optional_inner(tp) is not None:
        return f"{_expected(_optional_inner(tp))} or null"
    if dataclasses.is_dataclass(tp) or tp is dict:
        return "a mapping"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_plural(item)}"
    if typing.get_origin(tp) is dict:
        return f"a mapping of strings to {_plural(typing.get_args(tp)[1])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)"}[tp]


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, _expected(tp))


def _optional_inner(tp: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
        raise TypeError(f"unsupported field type {tp!r}")
    return None


def join(prefix: str, key: str) -> str:
    """``prefix.key`` (just ``key`` at the top level)."""
    return f"{prefix}.{key}" if prefix else key


def close_key(key: str, prefix: str, known: Sequence[str]) -> str:
    """Problem text for an unknown ``key`` in the section ``prefix``, naming the closest known key."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {join(prefix, close[0])}?)"
    return f"unknown key (known keys here: {', '.join(known)})"


def _check_rules(value: Any, rules: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if "choices" in rules and value not in rules["choices"]:
        return f"must be one of {', '.join(map(repr, rules['choices']))}; got {value!r}"
    if rules.get("nonempty") and len(value) == 0:
        return "must not be empty"
    bounds = []
    failed = False
    for name, op, ok in (
        ("ge", ">=", lambda v, b: v >= b),
        ("gt", ">", lambda v, b: v > b),
        ("lt", "<", lambda v, b: v < b),
    ):
        if name in rules:
            bounds.append(f"{op} {rules[name]}")
            failed = failed or not ok(value, rules[name])
    if failed:
        return f"must be {' and '.join(bounds)}; got {value!r}"
    return None


_SCALARS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _convert(
    tp: Any, value: Any, key: str, problems: list[str], unknown: UnknownKey, defaults: bool, declared: Any = None
) -> Any:
    """``value`` checked against the type ``tp`` (and converted, int -> float); ``NO_VALUE`` on a problem.

    ``declared`` is the field's full type (``int | None``) when ``tp`` is its non-null part, for messages.
    """
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else _convert(inner, value, key, problems, unknown, defaults, declared=tp)
    declared = declared or tp
    if dataclasses.is_dataclass(tp):
        return build(tp, {} if value is None else value, key, problems, unknown=unknown, defaults=defaults)
    origin = typing.get_origin(tp)
    if origin in (list, dict) or tp is dict:
        if not isinstance(value, list if origin is list else Mapping):
            problems.append(f"{key}: expected {_expected(declared)}, got {describe(value)}")
            return NO_VALUE
        if tp is dict:  # a free-form mapping
            return dict(value)
        if origin is list:
            items = [
                _convert(typing.get_args(tp)[0], item, f"{key}[{i}]", problems, unknown, defaults)
                for i, item in enumerate(value)
            ]
            return NO_VALUE if any(item is NO_VALUE for item in items) else items
        item_tp = typing.get_args(tp)[1]
        items = {k: _convert(item_tp, v, f"{key}[{k!r}]", problems, unknown, defaults) for k, v in value.items()}
        return NO_VALUE if any(v is NO_VALUE for v in items.values()) else items
    if tp not in _SCALARS:
        raise TypeError(f"unsupported field type {tp!r}")
    if not _SCALARS[tp](value):
        problems.append(f"{key}: expected {_expected(declared)}, got {describe(value)}")
        return NO_VALUE
    if tp is float:
        if not math.isfinite(value):  # YAML .inf / .nan, JSON Infinity / NaN
            problems.append(f"{key}: must be a finite number; got {value!r}")
            return NO_VALUE
        return float(value)
    if tp is str and not value.strip() and value:
        problems.append(f"{key}: must not be blank")
        return NO_VALUE
    return value


def build(
    cls: type, raw: Any, prefix: str, problems: list[str], *, unknown: UnknownKey = close_key, defaults: bool = True
) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw``; ``NO_VALUE`` if anything is wrong.

    Every problem (unknown and missing keys, types, value rules, cross checks) is appended to
    ``problems`` as ``"dotted.key: text"``; ``unknown`` words the unknown-key problems. With
    ``defaults=False`` every key must be present (a file that records every field, like a checkpoint's
    config.json), defaults notwithstanding.
    """
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix or '(top level)'}: expected a mapping of keys, got {describe(raw)}")
        return NO_VALUE
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    before = len(problems)

    for key in raw:
        if not isinstance(key, str) or key not in names:
            problems.append(f"{join(prefix, str(key))}: {unknown(str(key), prefix, names)}")

    values: dict[str, Any] = {}
    for f in fields:
        key = join(prefix, f.name)
        tp = hints[f.name]
        if f.name not in raw and not defaults:
            problems.append(f"{key}: missing required key")
            continue
        if f.name not in raw:
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
                continue
            if f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
                continue
            if dataclasses.is_dataclass(tp):  # report the section's own missing keys
                value = build(tp, {}, key, problems, unknown=unknown)
            else:
                problems.append(f"{key}: missing required key")
                continue
        else:
            value = _convert(tp, raw[f.name], key, problems, unknown, defaults)
        if value is NO_VALUE:
            continue
        if not dataclasses.is_dataclass(tp):
            problem = _check_rules(value, f.metadata)
            if problem:
                problems.append(f"{key}: {problem}")
                continue
        values[f.name] = value

    # Cross-field checks see only the values that passed their own checks.
    cross_check = getattr(cls, "_cross_check", None)
    if cross_check is not None:
        problems.extend(f"{join(prefix, name)}: {problem}" for name, problem in cross_check(values))
    return NO_VALUE if len(problems) > before else cls(**values)
