"""`onnx`, `eval --backend ort` and `verify` through the command line on the tiny model."""

import json
import shutil

import pytest

from tests.factories import cli_exit_code, make_tiny_checkpoint

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.fixture(scope="module")
def pipeline(tiny_llama_dir, toy_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = make_tiny_checkpoint(tiny_llama_dir, toy_data_dir, root / "ckpt")
    assert cli_exit_code(["onnx", str(ckpt), "-o", str(root / "onnx")]) == 0
    return root, ckpt, root / "onnx"


def test_eval_ort_gives_the_torch_answers(pipeline, toy_data_dir):
    root, ckpt, export = pipeline
    for backend, target in (("torch", ckpt), ("ort", export)):
        assert (
            cli_exit_code(
                [
                    "eval",
                    str(target),
                    "--backend",
                    backend,
                    "--data",
                    str(toy_data_dir),
                    "--threads",
                    "1",
                    "-o",
                    str(root / f"eval-{backend}"),
                ]
            )
            == 0
        )
    rows = {b: (root / f"eval-{b}" / "predictions.csv").read_text() for b in ("torch", "ort")}
    assert rows["torch"] == rows["ort"]
    summary = json.loads((root / "eval-ort" / "summary.json").read_text())
    assert summary["backend"] == "ort" and summary["rows"] == 12


def test_verify_passes_and_writes_its_report(pipeline, toy_data_dir, capsys):
    root, ckpt, export = pipeline
    assert (
        cli_exit_code(["verify", str(ckpt), str(export), "--data", str(toy_data_dir), "-o", str(root / "verify.json")])
        == 0
    )
    report = json.loads((root / "verify.json").read_text())
    assert report["ok"] and report["answers"]["agree"] == report["answers"]["rows"] == 12
    assert report["logits"]["prefill_logits_max_abs"] <= 1e-4
    assert "12/12 identical" in capsys.readouterr().out


def test_verify_refuses_another_checkpoint(pipeline, tiny_llama_dir, toy_data_dir, tmp_path, capsys):
    _, ckpt, export = pipeline
    other = make_tiny_checkpoint(tiny_llama_dir, toy_data_dir, tmp_path / "other", seed=5)
    assert cli_exit_code(["verify", str(other), str(export)]) == 1
    assert "exported from another checkpoint" in capsys.readouterr().err
    moved = shutil.copytree(ckpt, tmp_path / "moved")
    cfg = json.loads((moved / "config.json").read_text())
    cfg["base_model"]["fingerprint"] = "0" * 64
    (moved / "config.json").write_text(json.dumps(cfg))
    assert cli_exit_code(["verify", str(moved), str(export)]) == 1
    err = capsys.readouterr().err
    assert "base model differs" in err and "Hint:" in err and "Traceback" not in err


def test_wrong_target_for_the_backend_gets_a_hint(pipeline, toy_data_dir, capsys):
    _, ckpt, export = pipeline
    assert cli_exit_code(["eval", str(ckpt), "--backend", "ort", "--data", str(toy_data_dir)]) == 1
    assert "ilora-export onnx" in capsys.readouterr().err
    assert cli_exit_code(["eval", str(export), "--backend", "torch", "--data", str(toy_data_dir)]) == 1
    assert "--backend ort" in capsys.readouterr().err


def test_missing_checkpoint_fails_cleanly(tmp_path, capsys):
    assert cli_exit_code(["onnx", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error:") and not (tmp_path / "out").exists()


def _dead_pid() -> int:
    import subprocess
    import sys

    return int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_onnx_never_replaces_a_folder_it_did_not_write(pipeline, tmp_path, capsys):
    root, ckpt, _ = pipeline
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("keep me")
    for target in (user, root, ckpt):  # a user's folder, a fine-tuning folder, the checkpoint itself
        before = sorted(p.relative_to(target) for p in target.rglob("*"))
        assert cli_exit_code(["onnx", str(ckpt), "-o", str(target)]) == 1
        err = capsys.readouterr().err
        assert "refusing to replace it" in err and "Hint:" in err and "Traceback" not in err
        assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
        assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]
    assert (user / "notes.txt").read_text() == "keep me"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_exit_code(["onnx", str(ckpt), "-o", str(blocker)]) == 2  # click's own usage error
    assert "is a file" in capsys.readouterr().err and blocker.read_text() == "x"


def test_onnx_replaces_its_previous_export_and_cleans_abandoned_temporaries(pipeline, tmp_path, capsys):
    _, ckpt, export = pipeline
    target = shutil.copytree(export, tmp_path / "onnx")
    abandoned = tmp_path / f".onnx.tmp-{_dead_pid()}-x1"  # left by a killed export
    (abandoned / "decoder.onnx.data").parent.mkdir()
    (abandoned / "decoder.onnx.data").write_bytes(b"\0" * 1024)
    (target / "tokenizer" / "notes.txt").write_text("a user's file inside an export")
    assert cli_exit_code(["onnx", str(ckpt), "-o", str(target), "--no-validate"]) == 1
    assert "with files it did not write: tokenizer/notes.txt" in capsys.readouterr().err
    assert (target / "tokenizer" / "notes.txt").is_file()
    (target / "tokenizer" / "notes.txt").unlink()
    assert cli_exit_code(["onnx", str(ckpt), "-o", str(target), "--no-validate"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["format"] == "ilora-export/onnx" and "validation" not in manifest
