"""Fine-tuning recipes: YAML files validated into dataclasses.

A recipe is a YAML mapping whose sections mirror the dataclasses below (``data``, ``sasrec``,
``adapter``, ``train``). Validation walks the dataclass fields generically (types from
:func:`typing.get_type_hints`, value rules from field metadata) and collects every problem before
raising a single :class:`~ilora_export.errors.RecipeError`, so a user fixes a recipe in one pass::

    recipe recipes/x.yaml: 3 problem(s)
      - train.max_stpes: unknown key (did you mean train.max_steps?)
      - adapter.r: must be divisible by adapter.num_experts (r=8, num_experts=3)
      - train.batch_size: expected an integer, got a boolean (true)

Overrides are dotted ``KEY=VALUE`` strings (``train.max_steps=10``) whose value is parsed as YAML.
Path-valued keys stay plain strings; resolving them (relative to the current directory) is the
caller's job.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ilora_export.errors import RecipeError

__all__ = [
    "AdapterConfig",
    "DataConfig",
    "Recipe",
    "SASRecConfig",
    "TrainConfig",
    "load_recipe",
    "recipe_from_dict",
    "recipe_keys",
    "recipe_to_dict",
]

HINT = ("Every key is documented in docs/recipes.md; override one with a dotted KEY=VALUE argument, "
        "e.g. train.max_steps=10.")

from ilora_export.model.spec import ALL_PROJECTIONS as DEFAULT_TARGET_MODULES


def _rules(*, choices: Sequence[Any] | None = None, ge: float | None = None, gt: float | None = None,
           lt: float | None = None, nonempty: bool = False) -> dict[str, Any]:
    """Field metadata checked by the generic validator once the value has the right type."""
    rules: dict[str, Any] = {}
    if choices is not None:
        rules["choices"] = tuple(choices)
    for name, bound in (("ge", ge), ("gt", gt), ("lt", lt)):
        if bound is not None:
            rules[name] = bound
    if nonempty:
        rules["nonempty"] = True
    return rules


def _opt(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rules: Any) -> Any:
    return field(default=default, default_factory=factory, metadata=_rules(**rules))


@dataclass
class DataConfig:
    """The dataset to fine-tune and evaluate on."""

    root: str = _opt(nonempty=True)
    prompt_file: str | None = _opt(None, nonempty=True)
    max_train_rows: int | None = _opt(None, ge=1)
    eval_split: str = _opt("valid", choices=("valid", "test"))


@dataclass
class SASRecConfig:
    """The collaborative recommender whose user/item embeddings feed the LLM."""

    pretrained: str | None = _opt(None, nonempty=True)
    hidden: int = _opt(64, ge=1)
    num_heads: int = _opt(1, ge=1)
    dropout: float = _opt(0.1, ge=0, lt=1)
    epochs: int = _opt(20, ge=1)
    batch_size: int = _opt(256, ge=1)
    lr: float = _opt(1e-3, gt=0)
    weight_decay: float = _opt(1e-4, ge=0)

    @staticmethod
    def _cross_check(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if {"hidden", "num_heads"} <= v.keys() and v["hidden"] % v["num_heads"]:
            yield "hidden", f"must be divisible by sasrec.num_heads (hidden={v['hidden']}, num_heads={v['num_heads']})"


@dataclass
class AdapterConfig:
    """The iLoRA adapter: a mixture of LoRA experts mixed per user by a gate."""

    r: int = _opt(8, ge=1)
    alpha: float = _opt(32.0, gt=0)
    dropout: float = _opt(0.1, ge=0, lt=1)
    num_experts: int = _opt(4, ge=1)
    target_modules: list[str] = _opt(factory=lambda: list(DEFAULT_TARGET_MODULES), nonempty=True)
    gate: str = _opt("dense", choices=("dense", "resnet"))
    projector_hidden: int | None = _opt(None, ge=1)

    @staticmethod
    def _cross_check(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if {"r", "num_experts"} <= v.keys() and v["r"] % v["num_experts"]:
            yield "r", (f"must be divisible by adapter.num_experts (r={v['r']}, num_experts={v['num_experts']}): "
                        "each expert gets r / num_experts ranks")
        modules = v.get("target_modules", ())
        for name in sorted({m for m in modules if modules.count(m) > 1}):
            yield "target_modules", f"lists {name!r} more than once"


@dataclass
class TrainConfig:
    """The optimisation loop."""

    max_steps: int = _opt(200, ge=1)
    batch_size: int = _opt(4, ge=1)
    grad_accum: int = _opt(1, ge=1)
    lr: float = _opt(5e-4, gt=0)
    weight_decay: float = _opt(0.0, ge=0)
    warmup_steps: int = _opt(10, ge=0)
    max_grad_norm: float = _opt(1.0, gt=0)
    save_every: int = _opt(50, ge=1)
    log_every: int = _opt(10, ge=1)
    device: str = _opt("cpu", choices=("cpu", "cuda"))
    dtype: str = _opt("float32", choices=("float32", "bfloat16", "float16"))
    eval_rows: int | None = _opt(32, ge=0)


@dataclass(kw_only=True)
class Recipe:
    """A whole fine-tuning run."""

    output_dir: str = _opt(nonempty=True)
    base_model: str = _opt("default", nonempty=True)
    seed: int = _opt(42, ge=0)
    data: DataConfig = _opt()
    sasrec: SASRecConfig = _opt(factory=SASRecConfig)
    adapter: AdapterConfig = _opt(factory=AdapterConfig)
    train: TrainConfig = _opt(factory=TrainConfig)


# --------------------------------------------------------------------------------------------------
# YAML loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``5e-4`` as a float (YAML 1.1 wants ``5.0e-4``) and records duplicate keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):  # before merge keys (<<) are flattened in
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        self.duplicates.append((key_node.value, key_node.start_mark.line + 1))
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_error_text(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"
    return f"invalid YAML: {problem}"


def _parse_yaml(text: str) -> tuple[Any, list[tuple[str, int]]]:
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------------
# Generic validation

_NO_VALUE = object()


def _describe(value: Any) -> str:
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
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_plural(item)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)"}[tp]


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, _expected(tp))


def _optional_inner(tp: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
        raise TypeError(f"unsupported recipe field type {tp!r}")
    return None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def recipe_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every dotted leaf key a recipe accepts, in field order (``data.root``, ``train.max_steps``...)."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(recipe_keys(hints[f.name], _join(prefix, f.name)))
        else:
            keys.append(_join(prefix, f.name))
    return keys


def _unknown_key(key: str, prefix: str, known: Sequence[str]) -> str:
    """Problem text for an unknown ``key`` in the section ``prefix``, with a suggestion when one is close."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {_join(prefix, close[0])}?)"
    # The key may belong to another section (``train.num_experts`` -> ``adapter.num_experts``).
    everywhere = recipe_keys()
    elsewhere = [k for k in everywhere if k.rsplit(".", 1)[-1] == key]
    if not elsewhere:
        leaf = difflib.get_close_matches(key, [k.rsplit(".", 1)[-1] for k in everywhere], n=1, cutoff=0.75)
        elsewhere = [k for k in everywhere if leaf and k.rsplit(".", 1)[-1] == leaf[0]]
    if elsewhere:
        return f"unknown key (did you mean {' or '.join(elsewhere)}?)"
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
    for name, op, ok in (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
                         ("lt", "<", lambda v, b: v < b)):
        if name in rules:
            bounds.append(f"{op} {rules[name]}")
            failed = failed or not ok(value, rules[name])
    if failed:
        return f"must be {' and '.join(bounds)}; got {value!r}"
    return None


def _convert(tp: Any, value: Any, key: str, problems: list[str], declared: Any = None) -> Any:
    """``value`` checked against the type ``tp`` (and converted, int -> float); ``_NO_VALUE`` on a problem.

    ``declared`` is the field's full type (``int | None``) when ``tp`` is its non-null part, for messages.
    """
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else _convert(inner, value, key, problems, declared=tp)
    declared = declared or tp
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, key, problems)
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{key}: expected {_expected(declared)}, got {_describe(value)}")
            return _NO_VALUE
        items = [_convert(item_tp, item, f"{key}[{i}]", problems) for i, item in enumerate(value)]
        return _NO_VALUE if any(item is _NO_VALUE for item in items) else items
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if tp not in ok:
        raise TypeError(f"unsupported recipe field type {tp!r}")
    if not ok[tp](value):
        problems.append(f"{key}: expected {_expected(declared)}, got {_describe(value)}")
        return _NO_VALUE
    if tp is float:
        return float(value)
    if tp is str and not value.strip() and value:
        problems.append(f"{key}: must not be blank")
        return _NO_VALUE
    return value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw``; ``_NO_VALUE`` if anything is wrong."""
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix or '(top level)'}: expected a mapping of keys, got {_describe(raw)}")
        return _NO_VALUE
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    before = len(problems)

    for key in raw:
        if not isinstance(key, str) or key not in names:
            problems.append(f"{_join(prefix, str(key))}: {_unknown_key(str(key), prefix, names)}")

    values: dict[str, Any] = {}
    for f in fields:
        key = _join(prefix, f.name)
        tp = hints[f.name]
        if f.name not in raw:
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
                continue
            if f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
                continue
            if dataclasses.is_dataclass(tp):  # report the section's own missing keys
                value = _build(tp, {}, key, problems)
            else:
                problems.append(f"{key}: missing required key")
                continue
        else:
            value = _convert(tp, raw[f.name], key, problems)
        if value is _NO_VALUE:
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
        problems.extend(f"{_join(prefix, name)}: {problem}" for name, problem in cross_check(values))
    return _NO_VALUE if len(problems) > before else cls(**values)


# --------------------------------------------------------------------------------------------------
# Overrides


def _override_target(key: str) -> str | None:
    """None if the dotted ``key`` names a recipe field, else the problem text."""
    cls: Any = Recipe
    parts = key.split(".")
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if not dataclasses.is_dataclass(cls):
            return f"{prefix} is a single value, not a section"
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return _unknown_key(part, prefix, [f.name for f in dataclasses.fields(cls)])
        cls = hints[part]
    return None


def _apply_overrides(raw: Any, overrides: Sequence[str], problems: list[str]) -> None:
    for text in overrides:
        if "=" not in text:
            problems.append(f"{text}: malformed override (expected KEY=VALUE, e.g. train.max_steps=10)")
            continue
        key, _, value_text = text.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            problems.append(f"{text}: malformed override (expected KEY=VALUE, e.g. train.max_steps=10)")
            continue
        problem = _override_target(key)
        if problem:
            problems.append(f"{key}: {problem} (in override {text!r})")
            continue
        try:
            value, _ = _parse_yaml(value_text)
        except yaml.YAMLError as err:
            problems.append(f"{key}: override value does not parse ({_yaml_error_text(err)}) (in override {text!r})")
            continue
        if not isinstance(raw, dict):
            continue  # the top level itself is reported as not a mapping
        *sections, leaf = key.split(".")
        node = raw
        for part in sections:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                break  # the section is reported as not a mapping
        else:
            if isinstance(node.get(leaf), dict) and isinstance(value, dict):
                node[leaf] = {**node[leaf], **value}
            else:
                node[leaf] = value


# --------------------------------------------------------------------------------------------------
# Public API


def _raise(source: str, problems: list[str]) -> None:
    lines = [f"recipe {source}: {len(problems)} problem(s)"] + [f"  - {p}" for p in problems]
    raise RecipeError("\n".join(lines), hint=HINT)


def _finish(raw: Any, source: str, problems: list[str]) -> Recipe:
    recipe = _build(Recipe, raw, "", problems)
    if problems:
        _raise(source, problems)
    return recipe


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe at ``path`` with dotted ``KEY=VALUE`` ``overrides`` applied, fully validated.

    Raises :class:`RecipeError` listing every problem: file, YAML, override, key, type and value.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    source = str(path)
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe file not found: {source}",
                          hint="Pass the path of a recipe YAML file, e.g. recipes/lastfm-smollm2.yaml.")
    if path.is_dir():
        raise RecipeError(f"recipe {source} is a directory, not a YAML file",
                          hint="Pass the path of a recipe YAML file, e.g. recipes/lastfm-smollm2.yaml.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read recipe {source}: {err}", hint=HINT) from err

    problems: list[str] = []
    try:
        raw, duplicates = _parse_yaml(text)
    except yaml.YAMLError as err:
        problems.append(f"{source} {_yaml_error_text(err)}")
        _apply_overrides({}, overrides, problems)  # report override mistakes alongside
        _raise(source, problems)
    problems.extend(f"{source} line {line}: duplicate key {key!r}" for key, line in duplicates)
    if raw is None:
        problems.append("(top level): the recipe is empty; expected a mapping of keys")
        _apply_overrides({}, overrides, problems)
        _raise(source, problems)
    _apply_overrides(raw, overrides, problems)
    return _finish(raw, source, problems)


def recipe_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> Recipe:
    """A validated :class:`Recipe` from a plain mapping (e.g. one saved by :func:`recipe_to_dict`)."""
    return _finish(d, source, [])


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """``recipe`` as plain dicts, lists and scalars (YAML/JSON-serialisable); inverse of :func:`recipe_from_dict`."""
    return dataclasses.asdict(recipe)
