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

CHECKPOINT_FORMAT = "ilora-export/checkpoint"
EXPORT_FORMAT = "ilora-export/onnx"

CHECKPOINT = "checkpoint"
EXPORT = "export"
ENGINES = "engines"
EVALUATION = "evaluation"
FINETUNE_RUN = "finetune run"

_DESCRIPTIONS = {
    CHECKPOINT: "a checkpoint (written by finetune or import-official)",
    EXPORT: "an ONNX export (written by onnx or quantize)",
    ENGINES: "a TensorRT engines folder (written by trt)",
    EVALUATION: "an evaluation output (written by eval -o)",
    FINETUNE_RUN: "a fine-tuning output folder (written by finetune)",
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
    engines = _json_object(path / "engines.json")
    if engines is not None and "manifest_sha256" in engines:
        return ENGINES
    if (path / "run.json").is_file() or ((path / "summary.json").is_file() and (path / "predictions.csv").is_file()):
        return EVALUATION
    if (path / "recipe.json").is_file() and any((path / d).is_dir() for d in ("ckpt", "train_state", "stage1")):
        return FINETUNE_RUN
    return None


def describe_kind(kind: str | None) -> str:
    """A phrase for messages: ``"an ONNX export (written by onnx or quantize)"``."""
    return _DESCRIPTIONS.get(kind, "a folder of other files") if kind else "a folder of other files"


def of_kind(kind: str):
    """A predicate for :func:`ilora_export.fileio.atomic_dir`'s ``replaceable``: is the folder a ``kind``?"""

    def check(path: Path) -> bool:
        return folder_kind(path) == kind

    return check
