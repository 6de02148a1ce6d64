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
        assert cli_exit_code(["eval", str(target), "--backend", backend, "--data", str(toy_data_dir),
                              "--threads", "1", "-o", str(root / f"eval-{backend}")]) == 0
    rows = {b: (root / f"eval-{b}" / "predictions.csv").read_text() for b in ("torch", "ort")}
    assert rows["torch"] == rows["ort"]
    summary = json.loads((root / "eval-ort" / "summary.json").read_text())
    assert summary["backend"] == "ort" and summary["rows"] == 12


def test_verify_passes_and_writes_its_report(pipeline, toy_data_dir, capsys):
    root, ckpt, export = pipeline
    assert cli_exit_code(["verify", str(ckpt), str(export), "--data", str(toy_data_dir),
                          "-o", str(root / "verify.json")]) == 0
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
