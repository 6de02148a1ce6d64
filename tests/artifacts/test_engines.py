"""The engines index: one writer, one reader, and the folder kind told from it."""

from __future__ import annotations

import pytest

from ilora_export.artifacts.engines import ENGINES_INDEX, engines_export_dir, read_engines_index, write_engines_index
from ilora_export.artifacts.kinds import ENGINES, folder_kind
from ilora_export.errors import IloraError


def test_round_trip_and_kind(tmp_path):
    index = {"export": str(tmp_path / "onnx"), "dtype": "float16", "limits": {"max_batch": 8}}
    write_engines_index(tmp_path, index)
    assert read_engines_index(tmp_path) == index
    assert engines_export_dir(tmp_path) == tmp_path / "onnx"
    assert folder_kind(tmp_path) == ENGINES


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no engines.json; not an engines folder"),
        ("{not json", "engines.json: unreadable"),
        ('["export"]', "without the export it was built from"),
        ('{"export": 3}', "without the export it was built from"),
    ],
)
def test_a_bad_index_is_refused_with_a_hint(tmp_path, content, message):
    if content is not None:
        (tmp_path / ENGINES_INDEX).write_text(content, encoding="utf-8")
    with pytest.raises(IloraError, match=message) as err:
        read_engines_index(tmp_path)
    assert "ilora-export trt" in err.value.hint
    assert folder_kind(tmp_path) != ENGINES
