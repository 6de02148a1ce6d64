from pathlib import Path

import pytest

from ilora_export.fileio import atomic_dir, atomic_path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    final = tmp_path / "f.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert final.read_text() == "old" and leftovers(tmp_path) == []
    with atomic_path(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"  # invisible until the block ends
    assert final.read_text() == "new" and leftovers(tmp_path) == []
    assert final.stat().st_mode & 0o044  # not owner-only like a raw temp file


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "d"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("crash")
    assert not final.exists() and leftovers(tmp_path) == []
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(final) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"] and leftovers(tmp_path) == []
