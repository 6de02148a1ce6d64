"""What kind of folder a path is, told from its index file: one answer for every command.

A folder the tool wrote names itself in a small JSON index (a checkpoint's ``config.json``, an
export's ``manifest.json``, the engines' ``engines.json``, an evaluation's ``run.json`` or
``summary.json``). Commands use :func:`folder_kind` to refuse a folder of the wrong kind with a
message that says what it is, and to decide whether an output folder may be replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ilora_export.artifacts.engines import ENGINES_INDEX, is_engines_index
from ilora_export.fileio import folder_entries, listing

CHECKPOINT_FORMAT = "ilora-export/checkpoint"
EXPORT_FORMAT = "ilora-export/onnx"

CHECKPOINT = "checkpoint"
EXPORT = "export"
ENGINES = "engines"
EVALUATION = "evaluation"
FINETUNE_RUN = "finetune run"
TRAIN_STATE = "trainer state"

#: kind -> the index file that lists (under ``"files"``) every other file the tool wrote there
_INDEXES = {CHECKPOINT: "config.json", EXPORT: "manifest.json", TRAIN_STATE: "state.json"}
#: model kinds -> the index file whose hash covers everything the folder's answers depend on
MODEL_INDEXES = {CHECKPOINT: "config.json", EXPORT: "manifest.json", ENGINES: ENGINES_INDEX}

_DESCRIPTIONS = {
    CHECKPOINT: "a checkpoint (written by finetune or import-official)",
    EXPORT: "an ONNX export (written by onnx or quantize)",
    ENGINES: "a TensorRT engines folder (written by trt)",
    EVALUATION: "an evaluation output (written by eval -o)",
    FINETUNE_RUN: "a fine-tuning output folder (written by finetune)",
    TRAIN_STATE: "a trainer state (written by finetune)",
}


def _json_object(file: Path) -> dict | None:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_kind(path: str | os.PathLike) -> str | None:
    """``"checkpoint"``, ``"export"``, ``"engines"``, ``"evaluation"``, ``"finetune run"`` or None.

    Told from the index file's own format marker where it has one, so a user's folder that merely
    holds a ``config.json`` is not mistaken for a checkpoint. Never raises.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if (_json_object(path / "manifest.json") or {}).get("format") == EXPORT_FORMAT:
        return EXPORT
    if (_json_object(path / "config.json") or {}).get("format") == CHECKPOINT_FORMAT:
        return CHECKPOINT
    if is_engines_index(_json_object(path / ENGINES_INDEX)):
        return ENGINES
    state = _json_object(path / "state.json")
    if state is not None and isinstance(state.get("files"), dict) and "step" in state:
        return TRAIN_STATE
    if (path / "run.json").is_file() or ((path / "summary.json").is_file() and (path / "predictions.csv").is_file()):
        return EVALUATION
    if (path / "recipe.json").is_file() and any((path / d).is_dir() for d in ("ckpt", "train_state", "stage1")):
        return FINETUNE_RUN
    return None


def describe_kind(kind: str | None) -> str:
    """A phrase for messages: ``"an ONNX export (written by onnx or quantize)"``."""
    return _DESCRIPTIONS.get(kind, "a folder of other files") if kind else "a folder of other files"


def foreign_files(path: str | os.PathLike, kind: str) -> list[str] | None:
    """Files under a ``kind`` folder that its index does not list (relative POSIX paths); None when the
    kind keeps no such list."""
    path = Path(path)
    if kind not in _INDEXES:
        return None
    listed = (_json_object(path / _INDEXES[kind]) or {}).get("files")
    own = (set(listed) if isinstance(listed, dict) else set()) | {_INDEXES[kind]}
    return sorted(rel for p in path.rglob("*") if not p.is_dir() and (rel := p.relative_to(path).as_posix()) not in own)


def holds_only_its_own_files(path: str | os.PathLike, kind: str) -> bool:
    """True when ``path`` is a ``kind`` folder holding nothing but the files its index lists.

    For kinds without such a list (engines, evaluations) the kind alone decides.
    """
    return folder_kind(path) == kind and not foreign_files(path, kind)


def describe_folder(path: str | os.PathLike, limit: int = 3) -> str:
    """What a folder holds, for messages: its kind and the files the tool did not write there, or its
    first entries."""
    path = Path(path)
    kind = folder_kind(path)
    foreign = foreign_files(path, kind) if kind else None
    if foreign:
        return f"{describe_kind(kind)}, with files it did not write: {listing(foreign, limit)}"
    return f"{describe_kind(kind)}: {listing(folder_entries(path), limit)}"


def of_kind(kind: str):
    """A predicate for :func:`ilora_export.fileio.atomic_dir`'s ``replaceable``: a ``kind`` folder that
    holds only the files the tool wrote there (a user's file inside it keeps it from being replaced); its
    ``describe`` words what the folder is instead."""

    def check(path: Path) -> bool:
        return holds_only_its_own_files(path, kind)

    check.describe = describe_folder  # what a refusal says the folder is
    return check
