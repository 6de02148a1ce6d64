"""Everyday output faults through the command line: a read-only folder, a full disk, a file in the way.

Each command prints one ``Error:`` and one ``Hint:`` line, no traceback, exits 1 and leaves nothing
behind: the folder it was asked to write into holds exactly what it held before.
"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import tiny_recipe
from tests.factories import cli_exit_code, make_tiny_checkpoint

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.fixture(scope="module")
def ckpt(tiny_llama_dir, toy_data_dir, tmp_path_factory):
    return make_tiny_checkpoint(tiny_llama_dir, toy_data_dir, tmp_path_factory.mktemp("faults") / "ckpt")


@pytest.fixture(scope="module")
def recipe_file(tiny_llama_dir, toy_data_dir, tmp_path_factory):
    from ilora_export.train.recipe import recipe_to_dict

    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    recipe = recipe_to_dict(tiny_recipe(tiny_llama_dir, toy_data_dir, path.parent / "unused"))
    path.write_text(yaml.safe_dump(recipe))
    return path


COMMANDS = ["demo-data", "evalset", "eval", "onnx", "finetune"]


def _commands(ckpt, data, recipe_file, out):
    return {
        "demo-data": ["demo-data", "ml100k", "-o", str(out / "ml100k")],
        "evalset": ["evalset", "--data", str(data), "-o", str(out / "e.jsonl")],
        "eval": ["eval", str(ckpt), "--data", str(data), "--limit", "2", "-o", str(out / "eval")],
        "onnx": ["onnx", str(ckpt), "-o", str(out / "onnx"), "--no-validate"],
        "finetune": [
            "finetune",
            str(recipe_file),
            f"output_dir={out / 'run'}",
            "train.max_steps=1",
            "train.eval_rows=0",
        ],
    }


def _snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _assert_one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(("Error:", "Hint:"))]
    assert [line.split(":")[0] for line in lines] == ["Error", "Hint"], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_output(command, ckpt, toy_data_dir, recipe_file, readonly_dir, capsys):
    before = _snapshot(readonly_dir)
    args = _commands(ckpt, toy_data_dir, recipe_file, readonly_dir / "new")[command]
    assert cli_exit_code(args) == 1
    _assert_one_line_error(capsys)
    assert _snapshot(readonly_dir) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk(command, ckpt, toy_data_dir, recipe_file, full_disk_dir, capsys):
    before = _snapshot(full_disk_dir)
    args = _commands(ckpt, toy_data_dir, recipe_file, full_disk_dir / "new")[command]
    assert cli_exit_code(args) == 1
    _assert_one_line_error(capsys, "No space left")
    assert _snapshot(full_disk_dir) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_in_the_way(command, ckpt, toy_data_dir, recipe_file, tmp_path, capsys):
    blocker = tmp_path / "new"
    blocker.write_text("a file, not a folder")
    args = _commands(ckpt, toy_data_dir, recipe_file, blocker)[command]
    assert cli_exit_code(args) == 1
    _assert_one_line_error(capsys)
    assert _snapshot(tmp_path) == ["new"] and blocker.read_text() == "a file, not a folder"


def test_eval_never_writes_into_a_folder_of_other_files(ckpt, toy_data_dir, tmp_path, capsys):
    user = tmp_path / "reports"
    user.mkdir()
    (user / "summary.json").write_text('{"mine": true}')
    (user / "notes.txt").write_text("keep")
    args = ["eval", str(ckpt), "--data", str(toy_data_dir), "--limit", "2", "-o", str(user)]
    for extra in ([], ["--restart"]):
        assert cli_exit_code(args + extra) == 1
        _assert_one_line_error(capsys, "is not an evaluation output", "refusing to write into it")
        assert _snapshot(user) == ["notes.txt", "summary.json"]
        assert (user / "summary.json").read_text() == '{"mine": true}'
    (user / "summary.json").unlink()
    (user / "notes.txt").unlink()
    assert cli_exit_code(args) == 0  # an empty folder is fine, and so is the evaluation it now holds
    assert cli_exit_code(args) == 0
    assert "summary.json" in _snapshot(user)
