"""Fixtures for the data tests: synthetic dataset folders and the reference LastFM files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ilora_export.data.synthetic import write_synthetic_dataset
from tests.factories import ref_path  # noqa: F401  (re-exported for the data tests)


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
