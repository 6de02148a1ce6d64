"""Fixtures for the data tests: synthetic dataset folders and the reference LastFM files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ilora_export.data.synthetic import write_synthetic_dataset

#: the reference files (README, data/, prompt/) live outside the repository
REF_DIR = Path(os.environ.get("ILORA_REF_DIR", Path(__file__).resolve().parents[3] / "shared" / "ilora-ref"))


def ref_path(*parts: str) -> Path:
    path = REF_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} not present (set ILORA_REF_DIR to the ilora-ref folder)")
    return path


@pytest.fixture(scope="session")
def lastfm_dir() -> Path:
    return ref_path("data", "lastfm")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Read-only: 50 items, 200/12/12 rows, id2name layout."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "toy")


@pytest.fixture(scope="session")
def synthetic_ml_dir(tmp_path_factory) -> Path:
    """Read-only: the same data as ``synthetic_dir`` in the MovieLens layout."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic_ml") / "toy", layout="movielens")


@pytest.fixture
def toy_copy(tmp_path) -> Path:
    """A fresh synthetic dataset a test may modify."""
    return write_synthetic_dataset(tmp_path / "toy")
