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
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ilora_export.artifacts.spec import AdapterSpec
from ilora_export.errors import RecipeError
from ilora_export.schema import build, close_key, join, opt

__all__ = [
    "AdapterSpec",
    "DataConfig",
    "Recipe",
    "SASRecConfig",
    "TrainConfig",
    "load_recipe",
    "recipe_from_dict",
    "recipe_keys",
    "recipe_to_dict",
]

HINT = (
    "Every key is documented in docs/recipes.md; override one with a dotted KEY=VALUE argument, "
    "e.g. train.max_steps=10."
)


@dataclass
class DataConfig:
    """The dataset to fine-tune and evaluate on."""

    root: str = opt(nonempty=True)
    prompt_file: str | None = opt(None, nonempty=True)
    max_train_rows: int | None = opt(None, ge=1)
    eval_split: str = opt("valid", choices=("valid", "test"))


@dataclass
class SASRecConfig:
    """The collaborative recommender whose user/item embeddings feed the LLM: the official pretrained
    one, or one trained in stage 1 with these settings (``train.sasrec.train_sasrec``)."""

    pretrained: str | None = opt(None, nonempty=True)
    hidden: int = opt(64, ge=1)
    num_heads: int = opt(1, ge=1)
    dropout: float = opt(0.1, ge=0, lt=1)
    epochs: int = opt(20, ge=1)
    batch_size: int = opt(256, ge=1)
    lr: float = opt(1e-3, gt=0, lt=10)
    weight_decay: float = opt(1e-4, ge=0)

    @staticmethod
    def _cross_check(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if {"hidden", "num_heads"} <= v.keys() and v["hidden"] % v["num_heads"]:
            yield "hidden", f"must be divisible by sasrec.num_heads (hidden={v['hidden']}, num_heads={v['num_heads']})"


@dataclass
class TrainConfig:
    """The optimisation loop."""

    max_steps: int = opt(200, ge=1)
    batch_size: int = opt(4, ge=1)
    grad_accum: int = opt(1, ge=1)
    schedule: str = opt("cosine", choices=("cosine", "official"))  # train/schedule.py
    lr: float = opt(5e-4, gt=0, lt=10)
    weight_decay: float = opt(0.0, ge=0)
    warmup_steps: int = opt(10, ge=0)  # cosine only; official warms up over max_steps // 20
    max_grad_norm: float = opt(1.0, gt=0)  # cosine only; official does not clip
    warmup_start_lr: float = opt(7e-6, ge=0)  # official only
    min_lr: float | None = opt(None, ge=0)  # official only; null = lr / 100
    gate_lr_scale: float = opt(0.3, gt=0)  # official only: the gating network's lr (and its warm-up/floor)
    save_every: int = opt(50, ge=1)
    log_every: int = opt(10, ge=1)
    device: str = opt("cpu", choices=("cpu", "cuda"))
    dtype: str = opt("float32", choices=("float32", "bfloat16", "float16"))
    eval_rows: int | None = opt(32, ge=0)
    eval_every: int | None = opt(None, ge=1)  # validate every N steps; the best checkpoint goes to ckpt-best


@dataclass(kw_only=True)
class Recipe:
    """A whole fine-tuning run."""

    output_dir: str = opt(nonempty=True)
    base_model: str = opt("default", nonempty=True)
    seed: int = opt(42, ge=0)
    data: DataConfig = opt()
    sasrec: SASRecConfig = opt(factory=SASRecConfig)
    adapter: AdapterSpec = opt(factory=AdapterSpec)  # the model's own spec, stored in the checkpoint
    train: TrainConfig = opt(factory=TrainConfig)


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
# Keys


def recipe_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every dotted leaf key a recipe accepts, in field order (``data.root``, ``train.max_steps``...)."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(recipe_keys(hints[f.name], join(prefix, f.name)))
        else:
            keys.append(join(prefix, f.name))
    return keys


def _unknown_key(key: str, prefix: str, known: Sequence[str]) -> str:
    """:func:`~ilora_export.schema.close_key`, but a key of another section is suggested there."""
    if difflib.get_close_matches(key, list(known), n=1, cutoff=0.6):
        return close_key(key, prefix, known)
    # The key may belong to another section (``train.num_experts`` -> ``adapter.num_experts``).
    everywhere = recipe_keys()
    elsewhere = [k for k in everywhere if k.rsplit(".", 1)[-1] == key]
    if not elsewhere:
        leaf = difflib.get_close_matches(key, [k.rsplit(".", 1)[-1] for k in everywhere], n=1, cutoff=0.75)
        elsewhere = [k for k in everywhere if leaf and k.rsplit(".", 1)[-1] == leaf[0]]
    if elsewhere:
        return f"unknown key (did you mean {' or '.join(elsewhere)}?)"
    return close_key(key, prefix, known)


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
    recipe = build(Recipe, raw, "", problems, unknown=_unknown_key)
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
        raise RecipeError(
            f"recipe file not found: {source}",
            hint="Pass the path of a recipe YAML file, e.g. recipes/lastfm-smollm2.yaml.",
        )
    if path.is_dir():
        raise RecipeError(
            f"recipe {source} is a directory, not a YAML file",
            hint="Pass the path of a recipe YAML file, e.g. recipes/lastfm-smollm2.yaml.",
        )
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
