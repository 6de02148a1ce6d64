"""The project's one user-facing exception family.

Anything a user can fix (bad paths, malformed data, wrong recipe keys, unsafe pickles) raises an
:class:`IloraError`. The CLI prints ``message`` and ``Hint: ...`` without a traceback and exits
non-zero; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class IloraError(Exception):
    """A problem the user can fix. ``hint`` says how."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class DataError(IloraError):
    """Dataset files missing, unreadable or malformed."""


class RecipeError(IloraError):
    """A recipe that does not validate."""


class CheckpointError(IloraError):
    """A checkpoint directory that does not validate."""


class BaseModelError(IloraError):
    """A base-model folder that cannot serve as the iLoRA LLM."""


class UnsafePickleError(IloraError):
    """A pickle that references a global outside the allowlist."""


class ExportError(IloraError):
    """An export directory (graphs, external data, expert bank, manifest) that does not validate."""


class OutputError(IloraError):
    """An output path that cannot be written: permissions, a full disk, a file in the way, or a folder
    that holds files this tool did not write."""


class ValidationError(IloraError):
    """Two backends disagree beyond the tolerance the graph contract declares."""

    def __init__(self, message: str, hint: str | None = None, report: dict | None = None):
        super().__init__(message, hint)
        self.report = report or {}
