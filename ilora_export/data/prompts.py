"""Prompt templates: one per line, with ``[HistoryHere]`` and ``[CansHere]`` slots.

The official ``prompt/*.txt`` files use this format. Each title in a slot is followed by a
placeholder token whose input embedding the model replaces with the projected item embedding.
Evaluation uses the first template; training picks one per example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ilora_export.artifacts.tokens import CANS_EMB, HISTORY_EMB, PH
from ilora_export.errors import DataError

HISTORY_SLOT = "[HistoryHere]"
CANS_SLOT = "[CansHere]"

_SLOTS = re.compile(re.escape(HISTORY_SLOT) + "|" + re.escape(CANS_SLOT))
_FORMAT_HINT = f"A prompt file holds one template per line; each line contains {HISTORY_SLOT} and {CANS_SLOT}."


@dataclass(frozen=True)
class PromptTemplates:
    templates: tuple[str, ...]
    source: str  # the file the templates came from, or "default"


def _parse(text: str, source: str) -> PromptTemplates:
    templates = []
    # split("\n") rather than splitlines(): only the line end goes, trailing spaces stay.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        missing = [slot for slot in (HISTORY_SLOT, CANS_SLOT) if slot not in line]
        if missing:
            raise DataError(f"{source}: line {lineno} has no {' and no '.join(missing)} slot", hint=_FORMAT_HINT)
        templates.append(line)
    if not templates:
        raise DataError(f"{source}: no prompt template (the file is empty)", hint=_FORMAT_HINT)
    return PromptTemplates(templates=tuple(templates), source=source)


def load_prompt_file(path) -> PromptTemplates:
    """Templates from a UTF-8 text file, one per line; blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: prompt file not found", hint=_FORMAT_HINT) from None
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})", hint="Save the prompt file as UTF-8."
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})", hint=_FORMAT_HINT) from None
    return _parse(text, str(path))


def default_templates() -> PromptTemplates:
    """The project's own domain-neutral templates (they speak of "items")."""
    text = resources.files("ilora_export.data").joinpath("templates", "default.txt").read_text(encoding="utf-8")
    return _parse(text, "default")


def render_prompt(
    template: str, history_titles: list[str], candidate_titles: list[str], *, text_only: bool = False
) -> str:
    """Fill both slots: titles joined with ``", "``, each followed by a space and its placeholder token.

    ``text_only``: every title is followed by ``[PH]`` instead, a plain token whose embedding no item
    replaces (the official training's text-only prompts). Slots are replaced in one pass, so a title that
    happens to contain a slot's text stays as it is.
    """
    hist_token, cans_token = (PH, PH) if text_only else (HISTORY_EMB, CANS_EMB)
    history = ", ".join(f"{title} {hist_token}" for title in history_titles)
    candidates = ", ".join(f"{title} {cans_token}" for title in candidate_titles)
    return _SLOTS.sub(lambda m: history if m.group(0) == HISTORY_SLOT else candidates, template)


def read_templates(file: Path, source: str) -> PromptTemplates:
    """A ``prompts.txt`` (one template per line, as a checkpoint or an export holds it) as PromptTemplates."""
    lines = Path(file).read_text(encoding="utf-8").split("\n")
    return PromptTemplates(tuple(t for t in lines if t), source=source)
