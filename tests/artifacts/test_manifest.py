"""A hand-edited manifest.json and a non-finite expert bank are refused at load, naming the key or tensor."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ilora_export.artifacts.manifest import (
    BANK,
    MANIFEST,
    ExportInfo,
    read_bank,
    read_manifest,
)
from ilora_export.errors import ExportError
from ilora_export.fileio import sha256_file
from ilora_export.runtime.load import load_export
from tests.factories import cli_exit_code

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.fixture
def copy(tiny_export, tmp_path):
    """A copy of the tiny fp32 export (bank as inputs) to damage."""
    return shutil.copytree(tiny_export[1], tmp_path / "export")


def _edit(export, change) -> None:
    file = export / MANIFEST
    manifest = json.loads(file.read_text())
    change(manifest)
    file.write_text(json.dumps(manifest, indent=2))


def _delete(*path):
    def change(m):
        for key in path[:-1]:
            m = m[key]
        del m[path[-1]]

    return change


def _set(value, *path):
    def change(m):
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("float16", "dtype"), r"dtype: 'float16', but graphs.decoder declares float32 inputs_embeds"),
        (_set("fp32", "dtype"), r"dtype: must be one of 'float32', 'float16'; got 'fp32'"),
        (_set(True, "bake_experts"), r"bake_experts: true, but graphs.decoder declares expert-bank inputs"),
        (_set("no", "bake_experts"), r"bake_experts: expected a boolean \(true/false\), got a string \('no'\)"),
        (_delete("model", "state_size"), r"model.state_size: missing required key"),
        (_set("10", "model", "state_size"), r"model.state_size: expected an integer, got a string \('10'\)"),
        (
            _set(3, "model", "num_layers"),
            (
                r"graphs.decoder: does not match model, dtype and bake_experts "
                r"\(input bank.lora_A.\w+ .*expected past_key_values.2.key"
            ),
        ),
        (_set(5, "adapter", "num_experts"), r"adapter.num_experts: 5, but model.num_experts is 4"),
        (_set(4, "adapter", "r"), r"adapter.r: 4, but model.bank_shapes holds rank 8"),
        (_delete("graphs", "decoder", "inputs"), r"graphs.decoder.inputs: missing required key"),
        (
            _set([{"name": "seq"}], "graphs", "encoder", "inputs"),
            r"graphs.encoder.inputs\[0\].dtype: missing required key",
        ),
        (_delete("tokens", "[CansEmb]"), r"tokens: has no \[CansEmb\]"),
        (_set([2, "eos"], "eos_token_ids"), r"eos_token_ids\[1\]: expected an integer, got a string \('eos'\)"),
        (_delete("prompts_source"), r"prompts_source: missing required key"),
        (_set("hf", "prompts_style"), r"prompts_style: must be one of 'project', 'official'; got 'hf'"),
        (_delete("files", "catalogue.json"), r"files: lists no catalogue.json"),
        (_set({"bits": "8"}, "quantization"), r"quantization.bits: expected an integer, got a string \('8'\)"),
        (_delete("source", "checkpoint_sha256"), r"source.checkpoint_sha256: missing required key"),
        (_set([1], "model"), r"model: expected a mapping of keys, got a list \(\[1\]\)"),
    ],
)
def test_hand_edited_manifest_is_refused_naming_the_key(copy, change, message):
    _edit(copy, change)
    with pytest.raises(ExportError, match=message) as err:
        load_export(copy)
    assert err.value.message.startswith(str(copy / MANIFEST)) and "export again" in err.value.hint


def test_manifest_that_is_not_an_object_is_refused(copy):
    (copy / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ExportError, match="not an ilora-export/onnx v2 manifest"):
        read_manifest(copy)


def test_an_export_of_the_previous_format_is_refused_with_its_reason(copy):
    """v1 exports have the decoder that grows its cache by Concat; this version cannot drive them."""
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps(manifest | {"format_version": 1}))
    with pytest.raises(ExportError, match="an ilora-export/onnx v1 export; this version reads v2") as err:
        read_manifest(copy)
    assert "KV-cache interface changed" in err.value.message and "ilora-export onnx" in err.value.hint


def test_unedited_manifest_still_loads(tiny_export):
    assert load_export(tiny_export[1]).info.dtype == "float32"


def test_an_export_written_before_the_prompts_style_is_the_project_style(tiny_export, copy):
    """A project export records "project" (EOS allowed at the first step); an older one without the key
    loads the same."""
    export = load_export(tiny_export[1])
    assert export.info.manifest["prompts_style"] == "project" and export.assets.min_new_tokens == 0
    _edit(copy, _delete("prompts_style"))
    older = load_export(copy)
    assert older.assets.min_new_tokens == 0 and older.assets.templates.style == "project"


def test_cli_eval_on_an_edited_manifest_names_the_key(copy, toy_data_dir, capsys):
    _edit(copy, _set("float16", "dtype"))
    assert cli_exit_code(["eval", str(copy), "--backend", "ort", "--data", str(toy_data_dir), "--limit", "1"]) == 1
    err = capsys.readouterr().err
    assert "Error: " in err and "manifest.json: dtype: 'float16'" in err and "Hint: " in err and "Traceback" not in err


def _nan_bank(source, out, key="lora_B.v_proj", value=np.nan):
    bank = load_file(source)
    bank[key] = bank[key].copy()
    bank[key][1, 2, 3] = value
    save_file(bank, str(out), metadata={"num_experts": "4", "r": "8", "num_layers": "2"})
    return out


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_bank_given_with_bank_is_refused(tiny_export, tmp_path, value):
    from ilora_export.runtime.ort_backend import OrtBackend

    bank = _nan_bank(tiny_export[1] / BANK, tmp_path / "bad.safetensors", value=value)
    with pytest.raises(
        ExportError,
        match=r"bad.safetensors: lora_B.v_proj holds 1 non-finite value "
        r"\(NaN or Inf\), first at \[1, 2, 3\]",
    ):
        OrtBackend(load_export(tiny_export[1]), bank=bank)


def test_non_finite_bank_of_an_export_is_refused(copy):
    from ilora_export.runtime.ort_backend import OrtBackend

    shutil.copy(_nan_bank(copy / BANK, copy / "nan.safetensors"), copy / BANK)
    (copy / "nan.safetensors").unlink()
    _edit(copy, _set(sha256_file(copy / BANK), "files", BANK))  # as if exported so
    with pytest.raises(ExportError, match=r"bank.safetensors: lora_B.v_proj holds 1 non-finite value"):
        OrtBackend(load_export(copy))


def test_cli_eval_with_a_nan_bank_exits_with_an_error(tiny_export, toy_data_dir, tmp_path, capsys):
    bank = _nan_bank(tiny_export[1] / BANK, tmp_path / "bad.safetensors")
    assert (
        cli_exit_code(
            [
                "eval",
                str(tiny_export[1]),
                "--backend",
                "ort",
                "--data",
                str(toy_data_dir),
                "--limit",
                "1",
                "--bank",
                str(bank),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "Error: " in err and "lora_B.v_proj" in err and "Hint: " in err and "Traceback" not in err


def test_bank_that_overflows_float16_is_refused(tiny_export, tmp_path):
    info = read_manifest(tiny_export[1])
    fp16 = ExportInfo(info.path, info.manifest | {"dtype": "float16"})
    bank = _nan_bank(tiny_export[1] / BANK, tmp_path / "big.safetensors", key="lora_A.q_proj", value=1e6)
    with pytest.raises(ExportError, match=r"lora_A.q_proj holds 1 value beyond the float16 range"):
        read_bank(bank, fp16)
