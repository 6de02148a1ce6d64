"""Prompt templates: one per line, with ``[HistoryHere]`` and ``[CansHere]`` slots.

The official ``prompt/*.txt`` files use this format. Each title in a slot is followed by a
placeholder token whose input embedding the model replaces with the projected item embedding.
Evaluation uses the first template; training picks one per example.

A line is a template as it stands, trailing spaces included (the project's own checkpoints). In the
``official`` style (checkpoints imported from the official iLoRA code) each line is stripped, as the
official loader reads it, so the prompt ends right after the last word, as it did in that training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ilora_export.artifacts.checkpoint import OFFICIAL_PROMPTS, PROJECT_PROMPTS, PROMPT_STYLES
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
    style: str = PROJECT_PROMPTS  # PROMPT_STYLES: "official" for checkpoints imported from the official code

    def __post_init__(self):
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"prompt style {self.style!r}: expected one of {', '.join(PROMPT_STYLES)}")


def _parse(text: str, source: str, style: str) -> PromptTemplates:
    templates = []
    # split("\n") rather than splitlines(): only the line end goes, trailing spaces stay (but "official").
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if style == OFFICIAL_PROMPTS:
            line = line.strip()
        missing = [slot for slot in (HISTORY_SLOT, CANS_SLOT) if slot not in line]
        if missing:
            raise DataError(f"{source}: line {lineno} has no {' and no '.join(missing)} slot", hint=_FORMAT_HINT)
        templates.append(line)
    if not templates:
        raise DataError(f"{source}: no prompt template (the file is empty)", hint=_FORMAT_HINT)
    return PromptTemplates(templates=tuple(templates), source=source, style=style)


def load_prompt_file(path, style: str = PROJECT_PROMPTS) -> PromptTemplates:
    """Templates from a UTF-8 text file, one per line; blank lines are skipped. ``style`` "official":
    each line stripped, as the official loader reads it."""
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
    return _parse(text, str(path), style)


def in_style(templates: PromptTemplates, style: str) -> PromptTemplates:
    """``templates`` as their file reads in ``style``: each line stripped for "official" (a model imported
    from the official code evaluated with another prompt file); unchanged otherwise."""
    if style != OFFICIAL_PROMPTS or templates.style == style:
        return templates
    return PromptTemplates(tuple(t.strip() for t in templates.templates), templates.source, style)


def default_templates(style: str = PROJECT_PROMPTS) -> PromptTemplates:
    """The project's own domain-neutral templates (they speak of "items")."""
    text = resources.files("ilora_export.data").joinpath("templates", "default.txt").read_text(encoding="utf-8")
    return _parse(text, "default", style)


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


def read_templates(file: Path, source: str, style: str = PROJECT_PROMPTS) -> PromptTemplates:
    """A ``prompts.txt`` (one template per line, as a checkpoint or an export holds it, already in its
    ``style``) as PromptTemplates."""
    lines = Path(file).read_text(encoding="utf-8").split("\n")
    return PromptTemplates(tuple(t for t in lines if t), source=source, style=style)
