"""Weight-only quantization of an export (int8 / int4 MatMulNBits) and its quality gate, on the tiny model."""

import json
import shutil

import numpy as np
import pytest

from ilora_export.artifacts.manifest import BANK, MANIFEST, read_manifest
from ilora_export.data.evalset import load_or_build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.errors import IloraError
from ilora_export.eval.answers import evaluate_backend
from ilora_export.eval.quantize import quantize_export
from ilora_export.fileio import sha256_file
from ilora_export.runtime.load import load_export
from tests.factories import cli_exit_code

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[test])")


@pytest.fixture(scope="module")
def int8(tiny_export, toy_data_dir, tmp_path_factory):
    _, export = tiny_export
    out = tmp_path_factory.mktemp("quant") / "int8"
    logs = []
    manifest = quantize_export(export, out, bits=8, data_dir=toy_data_dir, threads=1, progress=False, log=logs.append)
    return export, out, manifest, logs


def _ort(export_dir):
    from ilora_export.runtime.ort_backend import OrtBackend

    export = load_export(export_dir)
    return OrtBackend(export, threads=1), export.assets


def test_base_weights_are_quantized_and_the_bank_is_not(int8):
    source, out, manifest, _ = int8
    graph = onnx.load(str(out / "decoder.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    info = read_manifest(out)  # every file hashed, verified
    layers = info.shape.num_layers
    # 7 projections per layer and the LM head; the bank's MatMuls take graph inputs and stay float
    assert ops.count("MatMulNBits") == manifest["quantization"]["quantized_matmuls"] == 7 * layers + 1
    assert {i.name for i in graph.graph.input} >= {f"bank.{k}" for k in info.shape.bank_shapes}
    assert sha256_file(out / BANK) == sha256_file(source / BANK)
    assert info.quantization["bits"] == 8 and info.quantization["source_manifest_sha256"] == sha256_file(
        source / MANIFEST
    )
    assert (out / "decoder.onnx.data").stat().st_size < 0.5 * (source / "decoder.onnx.data").stat().st_size


def test_quality_gate_reports_what_the_two_exports_answer(int8, toy_data_dir):
    source, out, manifest, logs = int8
    q = manifest["quantization"]["quality"]
    evalset = load_or_build_eval_set(load_dataset(toy_data_dir), "test", 0, None)
    runs = [evaluate_backend(*_ort(d), evalset, progress=False) for d in (source, out)]
    agree = sum(a["answer"] == b["answer"] for a, b in zip(runs[0].records, runs[1].records))
    assert (q["rows"], q["agree"]) == (len(evalset.rows), agree)
    assert q["hit_ratio@1_delta"] == pytest.approx(
        runs[1].summary["hit_ratio@1_of_total"] - runs[0].summary["hit_ratio@1_of_total"]
    )
    assert q["passed"] == (q["agreement"] >= q["min_agreement"])
    assert any(line.startswith("answers identical to fp32") for line in logs)
    # int8 weights move the logits a little, not a lot (the tiny model's logits are O(1))
    assert 0 < q["logits"]["prefill_logits_max_abs"] < 0.5


def test_bank_swap_still_applies_to_a_quantized_export(int8):
    from safetensors.numpy import load_file, save_file

    from ilora_export.runtime.ort_backend import OrtBackend

    _, out, _, _ = int8
    export = load_export(out)
    zero = {k: np.zeros_like(v) for k, v in load_file(out / BANK).items()}
    save_file(zero, str(out.parent / "zero.safetensors"), metadata=_bank_meta(out))
    ids = np.arange(1, 9)[None]
    gate = np.full((1, export.info.shape.num_experts), 0.25, np.float32)
    got = []
    for bank in (None, out.parent / "zero.safetensors"):
        be = OrtBackend(export, threads=1, bank=bank)
        got.append(be.step(be.embed(ids), np.arange(8), np.zeros(1, np.int64), gate, None)[0])
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the fp32 bank is live in the quantized graph


def _bank_meta(export_dir):
    from safetensors import safe_open

    with safe_open(str(export_dir / BANK), "np") as f:
        return f.metadata()


def test_warning_when_agreement_is_below_the_threshold(tiny_export, toy_data_dir, tmp_path):
    _, export = tiny_export
    logs = []
    m = quantize_export(
        export,
        tmp_path / "q4",
        bits=4,
        block_size=16,
        data_dir=toy_data_dir,
        limit=6,
        min_agreement=1.0,
        threads=1,
        progress=False,
        log=logs.append,
    )
    q = m["quantization"]["quality"]
    assert q["rows"] == 6
    warned = any(line.startswith("Warning: only") for line in logs)
    assert warned == (q["agreement"] < 1.0) and q["passed"] == (not warned)


def test_without_data_the_gate_is_skipped_with_a_warning(tiny_export, tmp_path):
    _, export = tiny_export
    logs = []
    m = quantize_export(export, tmp_path / "q", bits=8, log=logs.append)
    assert "quality" not in m["quantization"]
    assert any("were not compared" in line for line in logs)


def _edited_copy(export, tmp_path, **changes):
    """A copy of ``export`` whose manifest says ``changes``, with the decoder contract an export made
    so declares (manifest.json is validated for consistency when read)."""
    from ilora_export.artifacts.contract import ModelShape, decoder_contract

    copy = shutil.copytree(export, tmp_path / "edited")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest.update(changes)
    manifest["graphs"]["decoder"] = decoder_contract(
        ModelShape.from_dict(manifest["model"]), manifest["dtype"], bake_experts=manifest["bake_experts"]
    ).to_dict()
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dtype": "float16"}, "starts from fp32"),
        ({"bake_experts": True}, "where it would be quantized too"),
        ({"quantization": {"bits": 8}}, "already quantized"),
    ],
)
def test_unsuitable_exports_are_refused(tiny_export, tmp_path, changes, message):
    _, export = tiny_export
    with pytest.raises(IloraError, match=message):
        quantize_export(_edited_copy(export, tmp_path, **changes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_quantize_then_verify_reports_without_failing(tiny_export, toy_data_dir, tmp_path, capsys):
    ckpt, export = tiny_export
    out = tmp_path / "int4"
    assert (
        cli_exit_code(
            [
                "quantize",
                str(export),
                "-o",
                str(out),
                "--bits",
                "4",
                "--block-size",
                "16",
                "--data",
                str(toy_data_dir),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert "answers identical to fp32" in capsys.readouterr().out
    assert (
        cli_exit_code(
            [
                "verify",
                str(ckpt),
                str(out),
                "--data",
                str(toy_data_dir),
                "--threads",
                "1",
                "-o",
                str(tmp_path / "v.json"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["ok"] and report["quantization"]["bits"] == 4
    assert "4-bit weights" in capsys.readouterr().out
    assert cli_exit_code(["quantize", str(export), "-o", str(tmp_path / "x"), "--bits", "8", "--block-size", "24"]) == 1
    err = capsys.readouterr().err
    assert "power of two" in err and "Hint:" in err and "Traceback" not in err


def test_tensorrt_refuses_a_quantized_export(int8, tmp_path):
    from ilora_export.trt.build import build_engines
    from ilora_export.trt.engine import EngineError

    _, out, _, _ = int8
    with pytest.raises(EngineError, match="quantized for onnxruntime"):
        build_engines(out, output=tmp_path / "trt", emit_script=True)
