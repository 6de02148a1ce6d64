"""Export directory end to end on the tiny model: manifest, ORT answers == torch answers, bad input."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ilora_export.artifacts.manifest import BANK, MANIFEST, read_manifest
from ilora_export.checkpoint import load_checkpoint
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.errors import DataError, ExportError
from ilora_export.eval.answers import evaluate_backend
from ilora_export.export.package import export_checkpoint
from ilora_export.fileio import sha256_file
from ilora_export.runtime.load import checkpoint_assets, load_export
from tests.factories import make_tiny_checkpoint

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.fixture(scope="module")
def ckpt(tiny_llama_dir, toy_data_dir, tmp_path_factory):
    return make_tiny_checkpoint(tiny_llama_dir, toy_data_dir, tmp_path_factory.mktemp("ck") / "ckpt")


@pytest.fixture(scope="module")
def exports(ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "bank": export_checkpoint(ckpt, root / "bank"),
        "baked": export_checkpoint(ckpt, root / "baked", bake_experts=True),
    }


def _ort(export_dir, **kw):
    from ilora_export.runtime.ort_backend import OrtBackend

    export = load_export(export_dir)
    return OrtBackend(export, **kw), export.assets


def _torch(ckpt):
    from ilora_export.runtime.torch_backend import TorchBackend

    loaded = load_checkpoint(ckpt)
    return TorchBackend(loaded.model), checkpoint_assets(loaded)


def test_manifest_describes_and_hashes_the_export(exports, ckpt, toy_data_dir):
    m = json.loads((exports["bank"] / MANIFEST).read_text())
    assert m["catalogue_sha256"] == load_dataset(toy_data_dir).catalogue.fingerprint()
    assert m["adapter"]["num_experts"] == 4 and m["adapter"]["r"] == 8 and m["adapter"]["scaling"] == 16 / 2
    assert m["tokens"]["[HistoryEmb]"] > 49151 and m["opset"] >= 18
    assert set(m["versions"]) >= {"torch", "transformers", "onnx"}
    assert m["source"]["checkpoint_sha256"] == sha256_file(ckpt / "config.json")
    files = {p.relative_to(exports["bank"]).as_posix() for p in exports["bank"].rglob("*") if p.is_file()}
    assert set(m["files"]) == files - {MANIFEST}
    assert {
        "encoder.onnx",
        "decoder.onnx",
        "decoder.onnx.data",
        "bank.safetensors",
        "embeddings.safetensors",
        "catalogue.json",
        "prompts.txt",
    } <= files
    dec = {t["name"]: t for t in m["graphs"]["decoder"]["inputs"]}
    assert dec["inputs_embeds"]["axes"] == ["batch", "sequence", 64]
    assert dec["bank.lora_A.q_proj"]["axes"] == [2, 64, 8]  # A^T [L, in, r], no batch axis
    assert dec["bank.lora_B.q_proj"]["axes"] == [2, 8, 64]  # B^T [L, r, out]
    assert m["validation"]["greedy_token_agreement"] == 1.0
    assert m["validation"]["prefill_logits_max_abs"] <= 1e-4 and m["validation"]["decode_logits_max_abs"] <= 1e-4
    baked = json.loads((exports["baked"] / MANIFEST).read_text())
    assert not any(t["name"].startswith("bank.") for t in baked["graphs"]["decoder"]["inputs"])
    assert "bank.safetensors" not in baked["files"]


@pytest.mark.parametrize(
    "kind, bank_mode", [("bank", "fused"), ("bank", "folded"), ("bank", "input"), ("baked", "fused")]
)
def test_ort_answers_equal_torch_answers(exports, ckpt, toy_data_dir, kind, bank_mode):
    evalset = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    ref = evaluate_backend(*_torch(ckpt), evalset, batch_size=4, progress=False)
    got = evaluate_backend(*_ort(exports[kind], bank_mode=bank_mode), evalset, batch_size=4, progress=False)
    answers = [r["answer"] for r in ref.records]
    assert len(set(answers)) > 1  # varied, real answers (the tiny model's bank is random)
    assert [r["answer"] for r in got.records] == answers
    assert [r["sasrec_pick"] for r in got.records] == [r["sasrec_pick"] for r in ref.records]
    assert got.summary["hit_ratio@1_of_total"] == ref.summary["hit_ratio@1_of_total"]


def test_swapped_bank_behaves_as_pytorch_with_that_bank(exports, ckpt, tmp_path):
    from ilora_export.export.validate import compare_backends
    from ilora_export.model.moe_lora import BankLayout

    bank = load_file(exports["bank"] / BANK)
    other = {k: (v * 1.7 + 0.02).astype(np.float32) for k, v in bank.items()}
    save_file(other, str(tmp_path / "other.safetensors"), metadata={"num_experts": "4", "r": "8"})
    torch_backend, assets = _torch(ckpt)
    model = torch_backend.model
    import torch

    with torch.no_grad():
        as_layers = {k: torch.from_numpy(v).transpose(-1, -2) for k, v in other.items()}  # file holds A^T, B^T
        for name, t in BankLayout(model.llm).parameters_from(as_layers).items():
            model.llm.get_parameter(name).copy_(t)
    ort_backend, _ = _ort(exports["bank"], bank=tmp_path / "other.safetensors")
    tol = {"logits": 1e-4}
    report = compare_backends(torch_backend, ort_backend, assets, 10, tolerance=tol)
    assert report["greedy_token_agreement"] == 1.0
    # and the swapped bank really is different from the exported one
    original, _ = _ort(exports["bank"])
    with pytest.raises(Exception, match="disagrees"):
        compare_backends(torch_backend, original, assets, 10, tolerance=tol)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: {k: v[:, :, :4] if k.startswith("lora_A") else v[:, :4] for k, v in t.items()}, "wrong rank"),
        (lambda t: {k: v[:1] for k, v in t.items()}, "wrong layer count"),
        (lambda t: {k: v for k, v in t.items() if "q_proj" not in k}, "expert bank holds"),
    ],
)
def test_wrong_expert_bank_is_refused(exports, tmp_path, change, message):
    bad = change(load_file(exports["bank"] / BANK))
    save_file({k: np.ascontiguousarray(v) for k, v in bad.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ExportError, match=message):
        _ort(exports["bank"], bank=tmp_path / "bad.safetensors")


def test_bank_for_another_expert_count_is_refused(exports, tmp_path):
    bank = load_file(exports["bank"] / BANK)
    save_file(bank, str(tmp_path / "k2.safetensors"), metadata={"num_experts": "2", "r": "8", "num_layers": "2"})
    with pytest.raises(ExportError, match="num_experts=2"):
        _ort(exports["bank"], bank=tmp_path / "k2.safetensors")


def _copy(export_dir, tmp_path):
    return shutil.copytree(export_dir, tmp_path / "copy")


def test_truncated_external_data_is_reported(exports, tmp_path):
    copy = _copy(exports["bank"], tmp_path)
    data = copy / "decoder.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ExportError, match="decoder.onnx.data: sha256 does not match"):
        load_export(copy)
    # without the hash check, onnxruntime's own failure is still one clear ExportError
    from ilora_export.runtime.ort_backend import OrtBackend

    with pytest.raises(ExportError, match="cannot load the graph"):
        OrtBackend(load_export(copy, verify_files=False))


def test_corrupt_or_missing_graph_is_reported(exports, tmp_path):
    from ilora_export.runtime.ort_backend import OrtBackend

    copy = _copy(exports["bank"], tmp_path)
    (copy / "encoder.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ExportError, match="encoder.onnx: sha256"):
        load_export(copy)
    with pytest.raises(ExportError, match="encoder.onnx: onnxruntime cannot load"):
        OrtBackend(load_export(copy, verify_files=False))
    (copy / "decoder.onnx").unlink()
    with pytest.raises(ExportError, match="decoder.onnx: listed in manifest.json but missing"):
        load_export(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(ExportError, match="manifest.json: missing"):
        read_manifest(copy)


def test_eval_set_ids_beyond_the_catalogue_are_refused(exports, toy_data_dir):
    evalset = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    row = evalset.rows[0]
    evalset.rows[0] = type(row)(row.row_id, row.seq, row.len_seq, 77, row.candidates)
    with pytest.raises(DataError, match="item id 77 outside"):
        evaluate_backend(*_ort(exports["bank"]), evalset, progress=False)


def test_fp16_export_validates_against_fp32(ckpt, toy_data_dir, tmp_path):
    out = export_checkpoint(ckpt, tmp_path / "fp16", dtype="fp16")
    m = json.loads((out / MANIFEST).read_text())
    assert m["dtype"] == "float16"
    assert load_file(out / BANK)["lora_A.q_proj"].dtype == np.float16
    assert 0 < m["validation"]["prefill_logits_max_abs"] < 0.05  # fp16 rounding, not a broken graph
    evalset = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    got = evaluate_backend(*_ort(out), evalset, batch_size=4, progress=False)
    assert len(got.records) == 12
