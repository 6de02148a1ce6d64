"""Safe file writing shared by every stage: content hashes and atomic files and folders.

Everything is written to a temporary sibling first and moved into place with :func:`os.replace`, so
an interrupted run never leaves a file or folder that looks complete. Everyday write faults (a full
disk, a read-only folder, a file in the way) become one :class:`~ilora_export.errors.OutputError`, and
a folder is replaced only when it is a previous output of the same command.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ilora_export.errors import IloraError, OutputError

_CHUNK = 1024 * 1024


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


_LOW_SPACE = 1024 * 1024  # bytes free below which a failed write is taken for a full disk
_STALE_AGE = 3600.0  # seconds after which a temporary without an owner pid counts as abandoned
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}
_TEMP_NAME = re.compile(r"\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[^/]*$")


def _tmp_prefix(final: Path, kind: str = "tmp") -> str:
    # The writer's pid is part of the name, so a later run can tell an abandoned temporary from a live one.
    return f".{final.name}.{kind}-{os.getpid()}-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(path: Path, is_dir: bool) -> None:
    # mkstemp/mkdtemp (and safetensors) create owner-only entries; give the result the usual umask-based mode.
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _default_modes(root: Path) -> None:
    """:func:`_default_mode` on a folder and everything inside it (symlinks left alone)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                _default_mode(Path(dirpath, name), is_dir=False)
        for name in dirnames:
            _default_mode(Path(dirpath, name), is_dir=True)
    _default_mode(root, is_dir=True)


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def _within(name, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(name)).is_relative_to(os.path.abspath(folder))
    except (TypeError, ValueError):
        return False


def output_error(err: BaseException, target: str | os.PathLike) -> OutputError | None:
    """The :class:`OutputError` that ``err``, raised while writing ``target``, stands for; None when it is
    not an everyday write fault (a full disk, a read-only or forbidden folder, a file in the way).

    Writers report a full disk in their own words (``SafetensorError ... os error 28``, torch's
    ``unexpected pos``); such errors count as a full disk when the file system has almost no room left.
    """
    target = Path(target)
    where = target.parent
    if isinstance(err, OutputError):
        return err
    if isinstance(err, IloraError):
        return None  # a problem already told in the project's words
    if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
        reason = err.strerror or str(err)
    elif isinstance(err, OSError) and err.errno in _PATH_ERRNOS:
        if err.filename is not None and not _within(err.filename, where):
            return None  # e.g. an input that cannot be read: not this output's fault
        reason = err.strerror or str(err)
    elif (
        isinstance(err, Exception)
        and not isinstance(err, OSError)
        and (
            "os error 28" in str(err) or "No space left" in str(err) or (_free_bytes(where) or _LOW_SPACE) < _LOW_SPACE
        )
    ):
        reason = "No space left on device"
    else:
        return None
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or reason == "No space left on device":
        hint = f"free some space on that disk (df -h {where}) or write to another folder; nothing half-written was left"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "write to a folder you may write to (check its permissions, or pick another output path)"
    else:
        hint = "a file or folder is in the way: pick another output path"
    return OutputError(f"cannot write {target}: {reason}", hint)


def os_error_as_user_error(err: OSError) -> OutputError | None:
    """An everyday file-system fault met anywhere (permissions, full disk, a file in the way) as one
    :class:`OutputError`, for the command line's last line of defence; None for anything else."""
    if err.errno not in _DISK_ERRNOS | _PATH_ERRNOS:
        return None
    translated = output_error(err, Path(err.filename) if err.filename is not None else Path("."))
    if translated is None:
        return None
    where = f"{err.filename}: " if err.filename is not None else ""
    return OutputError(f"{where}{err.strerror or err}", translated.hint)


def _raise_output_error(err: BaseException, target: Path) -> None:
    """Re-raise ``err`` as an :class:`OutputError` when it is an everyday write fault."""
    translated = output_error(err, target)
    if translated is not None and translated is not err:
        raise translated from None


def make_dirs(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and its missing parents (everyday faults as :class:`OutputError`); the folders
    created, outermost first, for :func:`remove_empty_dirs` to take back after a failure."""
    folder = Path(folder)
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    created = []
    for candidate in reversed(missing):
        try:
            candidate.mkdir()
        except FileExistsError:
            if not candidate.is_dir():
                remove_empty_dirs(created)
                raise OutputError(
                    f"cannot write into {candidate}: it is a file, not a folder", "pick another output path"
                ) from None
            continue
        except OSError as err:
            remove_empty_dirs(created)
            translated = output_error(err, candidate / "-")
            if translated is None:
                raise
            raise translated from None
        created.append(candidate)
    return created


def remove_empty_dirs(created: list[Path]) -> None:
    """Remove folders this run created (:func:`make_dirs`), innermost first, as long as they are empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _is_abandoned(entry: Path) -> bool:
    match = _TEMP_NAME.search(entry.name)
    if match is None:
        return False
    if match["pid"] is None:  # written before temporaries carried their owner's pid
        try:
            return time.time() - entry.lstat().st_mtime > _STALE_AGE
        except OSError:
            return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by someone else
        return False
    return False


def clean_stale_temporaries(
    final: str | os.PathLike | None = None, *, folder: str | os.PathLike | None = None
) -> list[Path]:
    """Remove abandoned temporaries (``.NAME.tmp-*``, ``.NAME.old-*``): those of ``final`` (beside it), or
    every one in ``folder``.

    Only names this module gives its temporaries are touched, and only when their owner process no
    longer runs (or, for temporaries without an owner pid, when untouched for an hour), so a concurrent
    writer's work is never removed. Returns what was removed.
    """
    if (final is None) == (folder is None):
        raise TypeError("pass either final or folder")
    where = Path(folder) if folder is not None else Path(final).parent
    prefixes = (f".{Path(final).name}.tmp-", f".{Path(final).name}.old-") if final is not None else (".",)
    removed = []
    with contextlib.suppress(OSError):
        for entry in where.iterdir():
            if not entry.name.startswith(prefixes) or not _is_abandoned(entry):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``final``; on success it replaces ``final`` atomically.

    On any exception (KeyboardInterrupt included) the temporary file is removed, ``final`` is left
    untouched and folders created for it are removed again; everyday write faults (full disk,
    read-only or forbidden folder, a file in the way) are raised as :class:`OutputError`.
    """
    final = Path(final)
    if final.is_dir():
        raise OutputError(f"cannot write {final}: it is a folder", "pick another output path")
    created = make_dirs(final.parent)
    clean_stale_temporaries(final)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(final), dir=final.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        _default_mode(tmp_path, is_dir=False)
        os.replace(tmp_path, final)
    except BaseException as err:
        if tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        remove_empty_dirs(created)
        _raise_output_error(err, final)
        raise


def folder_entries(path: Path) -> list[str]:
    """The names in a folder, sorted, sub-folders with a trailing ``/``; [] when it cannot be read."""
    try:
        return sorted(p.name + ("/" if p.is_dir() else "") for p in Path(path).iterdir())
    except OSError:
        return []


def listing(names: list[str], limit: int = 3) -> str:
    """The first ``limit`` names for a message: ``a, b, c and 2 more``."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{', '.join(names[:limit])}{more}"


def _list_entries(path: Path) -> str:
    return f"a folder of other files: {listing(folder_entries(path))}"


def check_replaceable(
    final: str | os.PathLike, replaceable: Callable[[Path], bool] | None, what: str, *, into: bool = False
) -> None:
    """Raise :class:`OutputError` unless ``final`` is absent, an empty folder, or a folder ``replaceable``
    accepts (a previous output of the same command; None accepts none). The refusal describes the folder
    with ``replaceable.describe(path)`` where the predicate has one (:func:`ilora_export.artifacts.kinds.of_kind`
    tells the folder's kind), else by its first entries. ``into`` words the refusal for a
    command that writes files into the folder rather than replacing it."""
    final = Path(final)
    if not (final.exists() or final.is_symlink()):
        return
    if not final.is_dir():
        raise OutputError(f"cannot write {what} to {final}: it is a file", "pick another output folder")
    if not any(True for _ in final.iterdir()) or (replaceable is not None and replaceable(final)):
        return
    describe = getattr(replaceable, "describe", None) or _list_entries
    raise OutputError(
        f"{final} is not {what} ({describe(final)}); refusing to {'write into' if into else 'replace'} it",
        f"pick a new or empty output folder; an existing folder is {'written into' if into else 'replaced'} "
        f"only when it holds {what} written before",
    )


@contextlib.contextmanager
def atomic_dir(
    final: str | os.PathLike, *, replaceable: Callable[[Path], bool] | None = None, what: str = "a previous output"
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it becomes ``final``.

    An existing ``final`` is replaced just before the rename, and only when it is empty or
    ``replaceable(final)`` says it is a previous output of the same command (``what`` names that
    output in the refusal); anything else (any non-empty folder when ``replaceable`` is None) raises
    :class:`OutputError` before any work starts.
    Temporaries of ``final`` abandoned by killed runs are removed first. On any exception the temporary
    folder is deleted and ``final`` is left as it was; everyday write faults are raised as
    :class:`OutputError`.
    """
    final = Path(final)
    check_replaceable(final, replaceable, what)
    created = make_dirs(final.parent)
    clean_stale_temporaries(final)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final), dir=final.parent))
        yield tmp
        _default_modes(tmp)
        old = None
        if final.exists() or final.is_symlink():
            check_replaceable(final, replaceable, what)  # it may have changed during the work
            # Move the old entry aside first, so ``final`` is missing only between two renames.
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final, "old"), dir=final.parent)) / final.name
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_dirs(created)
        _raise_output_error(err, final)
        raise
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def hash_tree(root: str | os.PathLike, *, exclude: str) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative POSIX path, except the file named ``exclude``
    (the index that records these hashes)."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != exclude
    }


def find_hash_problem(root: str | os.PathLike, files: dict[str, str]) -> tuple[Path, str] | None:
    """The first listed file that is ``"missing"`` or ``"modified"`` (sha256 differs), or None."""
    for rel, digest in files.items():
        f = Path(root) / rel
        if not f.is_file():
            return f, "missing"
        if sha256_file(f) != digest:
            return f, "modified"
    return None
