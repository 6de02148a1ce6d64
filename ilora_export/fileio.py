"""Safe file writing shared by every stage: content hashes and atomic files and folders.

Everything is written to a temporary sibling first and moved into place with :func:`os.replace`, so
an interrupted run never leaves a file or folder that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1024 * 1024


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tmp_name(final: Path) -> str:
    return f".{final.name}.tmp-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(path: Path, is_dir: bool) -> None:
    # mkstemp/mkdtemp create owner-only entries; give the result the usual umask-based mode.
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``final``; on success it replaces ``final`` atomically.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``final`` is
    left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_name(final), dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _default_mode(tmp_path, is_dir=False)
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it becomes ``final``.

    An existing ``final`` is removed just before the rename. On any exception the temporary
    folder is deleted and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_name(final), dir=final.parent))
    try:
        yield tmp
        _default_mode(tmp, is_dir=True)
        old = None
        if final.exists() or final.is_symlink():
            # Move the old entry aside first, so ``final`` is missing only between two renames.
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent)) / final.name
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def hash_tree(root: str | os.PathLike, *, exclude: str) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative POSIX path, except the file named ``exclude``
    (the index that records these hashes)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != exclude}


def find_hash_problem(root: str | os.PathLike, files: dict[str, str]) -> tuple[Path, str] | None:
    """The first listed file that is ``"missing"`` or ``"modified"`` (sha256 differs), or None."""
    for rel, digest in files.items():
        f = Path(root) / rel
        if not f.is_file():
            return f, "missing"
        if sha256_file(f) != digest:
            return f, "modified"
    return None
