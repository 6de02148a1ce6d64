from pathlib import Path

import pytest

from ilora_export.errors import OutputError
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
    with pytest.raises(OutputError, match="refusing to replace it"):  # no predicate: only an empty folder goes
        with atomic_dir(final):
            pass
    with atomic_dir(final, replaceable=lambda p: (p / "a").is_file()) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"] and leftovers(tmp_path) == []


def test_atomic_dir_refuses_a_folder_of_other_files_and_deletes_nothing(tmp_path):
    final = tmp_path / "out"
    (final / "sub").mkdir(parents=True)
    (final / "notes.txt").write_text("mine")
    is_export = lambda p: (p / "manifest.json").is_file()  # noqa: E731
    expected = r"is not an export \(a folder of other files: notes\.txt, sub/\); refusing to replace it"
    with pytest.raises(OutputError, match=expected):
        with atomic_dir(final, replaceable=is_export, what="an export") as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert (final / "notes.txt").read_text() == "mine" and (final / "sub").is_dir()
    assert leftovers(tmp_path) == []
    # an empty folder, and a previous output of the same kind, are replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, empty):
        with atomic_dir(target, replaceable=is_export) as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in empty.iterdir()) == ["manifest.json"]


def test_atomic_dir_rechecks_the_folder_before_replacing_it(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(OutputError, match="refusing"):
        with atomic_dir(final, replaceable=lambda p: False) as tmp:
            (tmp / "a").write_text("1")
            final.mkdir()
            (final / "user.txt").write_text("appeared meanwhile")
    assert (final / "user.txt").is_file() and leftovers(tmp_path) == []


def test_a_file_in_the_way_is_one_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="it is a file"):
        with atomic_dir(blocker):
            pass
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        with atomic_path(blocker / "sub" / "f.txt"):
            pass
    with pytest.raises(OutputError, match="it is a folder"):
        with atomic_path(tmp_path):
            pass
    assert blocker.read_text() == "x"


def test_abandoned_temporaries_are_cleaned_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys
    import time

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    stale = tmp_path / f".out.tmp-{dead}-abc"
    (stale / "big").mkdir(parents=True)
    stale_old = tmp_path / f".out.old-{dead}-xyz"
    stale_old.mkdir()
    live = tmp_path / f".out.tmp-{os.getppid()}-def"  # a running process (the test runner's parent)
    live.mkdir()
    legacy = tmp_path / ".out.tmp-k2j3h4"  # no pid: abandoned once untouched for an hour
    legacy.mkdir()
    old_time = time.time() - 2 * 3600
    os.utime(legacy, (old_time, old_time))
    other = tmp_path / f".other.tmp-{dead}-abc"  # another target's temporary
    other.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert sorted(leftovers(tmp_path)) == sorted([live.name, other.name])


def test_full_disk_is_one_output_error_and_leaves_nothing(full_disk_dir):
    import numpy as np
    from safetensors.numpy import save_file

    target = full_disk_dir / "new" / "deeper" / "out"
    with pytest.raises(OutputError, match="No space left") as err:
        with atomic_dir(target) as tmp:
            save_file({"w": np.zeros(200_000, np.float32)}, str(tmp / "w.safetensors"))
    assert "df -h" in err.value.hint
    assert sorted(p.name for p in full_disk_dir.iterdir()) == [".filler"]  # created parents removed too
    with pytest.raises(OutputError, match="No space left"):
        with atomic_path(full_disk_dir / "made" / "x.txt") as tmp:
            tmp.write_text("y" * 1_000_000)
    assert sorted(p.name for p in full_disk_dir.iterdir()) == [".filler"]


def test_read_only_folder_is_one_output_error(readonly_dir):
    for ctx in (
        atomic_dir(readonly_dir / "out"),
        atomic_path(readonly_dir / "sub" / "f.txt"),
        atomic_path(readonly_dir / "f.txt"),
    ):
        with pytest.raises(OutputError, match="cannot write") as err:
            with ctx as tmp:
                Path(tmp, "x").write_text("1") if tmp.is_dir() else tmp.write_text("1")
        assert "permissions" in err.value.hint
    assert sorted(p.name for p in readonly_dir.iterdir()) == ["existing.txt"]


def test_files_in_an_atomic_dir_get_the_usual_mode(tmp_path):
    import os

    import numpy as np
    from safetensors.numpy import save_file

    with atomic_dir(tmp_path / "out") as tmp:
        save_file({"w": np.zeros(4, np.float32)}, str(tmp / "w.safetensors"))  # safetensors writes 0600
        (tmp / "sub").mkdir(mode=0o700)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out" / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o777 & ~mask
