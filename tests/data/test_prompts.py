from __future__ import annotations

import pytest

from ilora_export.artifacts.tokens import CANS_EMB, HISTORY_EMB
from ilora_export.data.prompts import (
    CANS_SLOT,
    HISTORY_SLOT,
    PromptTemplates,
    default_templates,
    load_prompt_file,
    render_prompt,
)
from ilora_export.errors import DataError

from .conftest import ref_path


def test_default_templates():
    prompts = default_templates()
    assert isinstance(prompts, PromptTemplates) and prompts.source == "default"
    assert 2 <= len(prompts.templates) <= 3
    for template in prompts.templates:
        assert template.count(HISTORY_SLOT) == 1 and template.count(CANS_SLOT) == 1
        assert template.index(HISTORY_SLOT) < template.index(CANS_SLOT)
        # the answer follows the prompt directly
        assert template.endswith(" is ")
        # domain-neutral wording
        assert not any(word in template.lower() for word in ("artist", "movie", "game", "music"))


def test_official_prompt_file_keeps_trailing_spaces():
    path = ref_path("prompt", "artist.txt")
    prompts = load_prompt_file(path)
    assert prompts.source == str(path)
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    assert prompts.templates == tuple(lines)
    assert prompts.templates[0].endswith("The answer is ")


def test_prompt_file_format(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xef\xbb\xbfA [HistoryHere] B [CansHere] is \r\n\n   \nC [CansHere] D [HistoryHere]:  \n")
    assert load_prompt_file(path).templates == ("A [HistoryHere] B [CansHere] is ", "C [CansHere] D [HistoryHere]:  ")


def test_official_style_strips_each_line_as_the_official_loader(tmp_path):
    """Checkpoints imported from the official code: each line stripped (``line.strip()``), nothing else."""
    path = tmp_path / "p.txt"
    text = "A [HistoryHere] B [CansHere] is \r\n\n  \tC [CansHere] D [HistoryHere]:  \n"
    path.write_text(text, encoding="utf-8")
    official = load_prompt_file(path, "official")
    assert official.templates == tuple(p.strip() for p in text.splitlines() if p.strip())
    assert official.templates == ("A [HistoryHere] B [CansHere] is", "C [CansHere] D [HistoryHere]:")
    assert official.style == "official" and load_prompt_file(path).style == "project"
    assert default_templates("official").templates == tuple(t.strip() for t in default_templates().templates)
    with pytest.raises(ValueError, match="prompt style 'hf'"):
        load_prompt_file(path, "hf")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[HistoryHere] [CansHere]\n\nonly [HistoryHere] here\n", "line 3 has no \\[CansHere\\] slot"),
        ("[HistoryHere] [CansHere]\nnothing\n", "line 2 has no \\[HistoryHere\\] and no \\[CansHere\\] slot"),
        ("\n \n", "no prompt template"),
    ],
)
def test_bad_prompt_file(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        load_prompt_file(path)
    assert str(err.value).startswith(str(path)) and err.value.hint


def test_missing_prompt_file(tmp_path):
    with pytest.raises(DataError, match="prompt file not found"):
        load_prompt_file(tmp_path / "none.txt")


def test_render_prompt():
    text = render_prompt("Seen [HistoryHere]. Pick from [CansHere]. The answer is ", ["A", "B c"], ["X", "Y", "Z"])
    assert text == (
        f"Seen A {HISTORY_EMB}, B c {HISTORY_EMB}. Pick from X {CANS_EMB}, Y {CANS_EMB}, Z {CANS_EMB}. The answer is "
    )


def test_render_prompt_does_not_expand_slots_inside_titles():
    text = render_prompt("[HistoryHere] | [CansHere]", ["odd [CansHere] title"], ["C"])
    assert text == f"odd [CansHere] title {HISTORY_EMB} | C {CANS_EMB}"
    assert render_prompt("[HistoryHere]|[CansHere]", [], []) == "|"
