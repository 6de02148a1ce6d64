"""The TensorRT engines folder's index, ``engines.json``: its one reader and writer.

::

    trt/
      engines.json       the export it was built from (a path relative to this folder, so both can be
                         copied together), that export's manifest hash, the limits and the optimization
                         profiles of both graphs ("built": true once the plans exist)
      encoder.plan, decoder.plan (+ .json metadata), timing.cache, build_engines.sh

Torch-free and TensorRT-free: commands that only route to an engines folder read it here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ilora_export.errors import IloraError
from ilora_export.fileio import atomic_path

ENGINES_INDEX = "engines.json"

_HINT = "build the engines again: ilora-export trt EXPORT_DIR"


def write_engines_index(folder, index: dict) -> Path:
    """Write ``index`` as ``folder/engines.json`` (atomically)."""
    path = Path(folder) / ENGINES_INDEX
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path


def is_engines_index(data: object) -> bool:
    """Whether parsed JSON is an engines index: an object naming the export it was built from."""
    return isinstance(data, dict) and isinstance(data.get("export"), str)


def read_engines_index(folder) -> dict:
    """The index of an engines folder; :class:`IloraError` when it is absent, unreadable or names no export."""
    path = Path(folder) / ENGINES_INDEX
    if not path.is_file():
        raise IloraError(
            f"{folder}: no {ENGINES_INDEX}; not an engines folder",
            "build engines first: ilora-export trt EXPORT_DIR (they go to EXPORT_DIR/trt)",
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise IloraError(f"{path}: unreadable", _HINT) from None
    if not is_engines_index(index):
        raise IloraError(f"{path}: without the export it was built from", _HINT)
    return index


def export_reference(export, folder) -> str:
    """How an engines folder names its export: relative to the folder (absolute across drives)."""
    try:
        return os.path.relpath(Path(export).resolve(), Path(folder).resolve())
    except ValueError:  # another drive on Windows
        return str(Path(export).resolve())


def engines_export_dir(folder) -> Path:
    """The export folder an engines folder was built from (a relative reference resolves from the folder)."""
    return Path(folder) / read_engines_index(folder)["export"]
