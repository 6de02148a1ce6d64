"""A checkpoint's config.json is validated key by key; tensors must be finite; wrong folders are named."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ilora_export.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ilora_export.data.llara import load_dataset
from ilora_export.data.prompts import default_templates
from ilora_export.errors import CheckpointError
from ilora_export.fileio import sha256_file
from tests.factories import cli_exit_code, make_tiny_checkpoint, make_tiny_ilora


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_llama_dir, toy_data_dir):
    return make_tiny_checkpoint(tiny_llama_dir, toy_data_dir, tmp_path_factory.mktemp("cfg") / "ckpt")


def _edited(ckpt, tmp_path, edit):
    """A copy of ``ckpt`` whose config.json went through ``edit(config)``."""
    dst = tmp_path / "ckpt"
    shutil.copytree(ckpt, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _set(section, key, value):
    return lambda cfg: cfg[section].__setitem__(key, value)


def _drop(section, key):
    return lambda cfg: cfg[section].pop(key)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_set("adapter", "r", "eight"), "adapter.r: expected an integer, got a string ('eight')"),
        (_set("adapter", "alpha", float("nan")), "adapter.alpha: must be a finite number; got nan"),
        (_set("adapter", "num_experts", 3), "adapter.r: must be divisible by adapter.num_experts (r=8, num_experts=3)"),
        (_set("adapter", "gate", "sparse"), "adapter.gate: must be one of 'dense', 'resnet'; got 'sparse'"),
        (_set("adapter", "dtype", "float16"), "adapter.dtype: unknown key"),
        (_drop("adapter", "target_modules"), "adapter.target_modules: missing required key"),
        (_drop("base_model", "hidden_size"), "base_model.hidden_size: missing required key"),
        (_set("base_model", "num_hidden_layers", "2"), "base_model.num_hidden_layers: expected an integer"),
        (_set("sasrec", "hidden", 16.5), "sasrec.hidden: expected an integer, got a number (16.5)"),
        (_set("sasrec", "dtype", "float16"), "sasrec.dtype: unknown key"),
        (_set("tokens", "[PAD]", "x"), "tokens['[PAD]']: expected an integer, got a string ('x')"),
        (lambda cfg: cfg.__setitem__("tokens", []), "tokens: expected a mapping of strings to integers, got a list"),
        (lambda cfg: cfg.__setitem__("dtype", "float16"), "dtype: unknown key"),
        (lambda cfg: cfg.pop("prompts"), "prompts: missing required key"),
        (_set("prompts", "style", "hf"), "prompts.style: must be one of 'project', 'official'; got 'hf'"),
    ],
)
def test_hand_edited_config_names_the_key(ckpt, tmp_path, edit, problem):
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(_edited(ckpt, tmp_path, edit))
    assert err.value.message.startswith(f"{tmp_path / 'ckpt' / 'config.json'}: ")
    assert problem in err.value.message and "\n" not in err.value.message
    assert "config.json" in err.value.hint


def test_config_written_before_the_prompts_style_reads_as_the_project_style(ckpt, tmp_path):
    from ilora_export.artifacts.checkpoint import prompts_style

    assert prompts_style(read_checkpoint(ckpt).config) == "project"  # written so by save_checkpoint
    assert read_checkpoint(ckpt).config["prompts"]["style"] == "project"
    older = read_checkpoint(_edited(ckpt, tmp_path, _drop("prompts", "style")))
    assert "style" not in older.config["prompts"] and prompts_style(older.config) == "project"


def test_config_that_is_not_a_mapping(ckpt, tmp_path):
    dst = _edited(ckpt, tmp_path, lambda cfg: None)
    (dst / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json: not an ilora-export/checkpoint v1 config"):
        read_checkpoint(dst)


def test_hand_edited_config_is_one_error_line_on_the_cli(ckpt, tmp_path, capsys):
    dst = _edited(ckpt, tmp_path, _set("adapter", "r", "eight"))
    assert cli_exit_code(["onnx", str(dst), "-o", str(tmp_path / "onnx")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == (f"Error: {dst / 'config.json'}: adapter.r: expected an integer, got a string ('eight')")
    assert lines[1].startswith("Hint: ") and len(lines) == 2
    assert not (tmp_path / "onnx").exists()


def test_config_that_contradicts_its_tensors_says_so(ckpt, tmp_path):
    dst = _edited(ckpt, tmp_path, _set("adapter", "num_experts", 2))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst)
    msg = err.value.message
    assert msg.startswith(f"{dst / 'adapter.safetensors'}: gate_net.fc.")
    assert "has shape (4" in msg and "num_experts=2" in msg and "config.json" in msg
    assert "base model" not in msg and "config.json" in err.value.hint


def test_sasrec_config_that_contradicts_its_tensors_says_so(ckpt, tmp_path):
    dst = _edited(ckpt, tmp_path, _set("sasrec", "hidden", 32))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst)
    assert err.value.message.startswith(f"{dst / 'sasrec.safetensors'}: ")
    assert "hidden=32" in err.value.message and "base model" not in err.value.message


# ---------------------------------------------------------------- non-finite tensors


def test_saving_non_finite_weights_is_refused(tmp_path, tiny_llama_dir, toy_data_dir):
    model = make_tiny_ilora(tiny_llama_dir)
    name = next(k for k in model.adapter_state_dict() if ".lora_B." in k)
    with torch.no_grad():
        model.adapter_state_dict()[name][0, 0] = float("nan")
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(
            model,
            tmp_path / "ckpt",
            base_model_ref="x",
            base_model_dir=tiny_llama_dir,
            catalogue=load_dataset(toy_data_dir).catalogue,
            templates=default_templates(),
        )
    assert err.value.message == f"{tmp_path / 'ckpt'}: {name} holds non-finite values (nan); not saved"
    assert err.value.hint
    assert list(tmp_path.iterdir()) == []  # nothing written


def _poison(ckpt, tmp_path, file, value):
    """A copy of ``ckpt`` whose ``file`` holds ``value`` in its first tensor, with config.json's sha256 updated
    (a checkpoint written before non-finite weights were refused)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(ckpt, dst)
    tensors = load_file(dst / file)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = value
    save_file(tensors, dst / file)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["files"][file] = sha256_file(dst / file)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, name


@pytest.mark.parametrize("file", ["adapter.safetensors", "sasrec.safetensors", "added_tokens.safetensors"])
def test_loading_non_finite_weights_is_refused(ckpt, tmp_path, file):
    dst, name = _poison(ckpt, tmp_path, file, float("inf"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst)
    assert err.value.message == f"{dst / file}: {name} holds non-finite values (inf)"


def test_eval_of_a_nan_checkpoint_fails_before_generating(ckpt, tmp_path, toy_data_dir, capsys):
    dst, name = _poison(ckpt, tmp_path, "adapter.safetensors", float("nan"))
    assert cli_exit_code(["eval", str(dst), "--data", str(toy_data_dir), "--limit", "2"]) == 1
    err = capsys.readouterr().err
    assert f"Error: {dst / 'adapter.safetensors'}: {name} holds non-finite values (nan)" in err
    assert "Hint: " in err and "Traceback" not in err


# ---------------------------------------------------------------- folders that are not checkpoints


@pytest.mark.parametrize(
    "index, kind, hint",
    [
        ({"manifest.json": {"format": "ilora-export/onnx", "format_version": 1}}, "an ONNX export", "--backend ort"),
        ({"engines.json": {"export": "/x", "dtype": "float32"}}, "a TensorRT engines folder", "--backend trt"),
    ],
)
def test_export_or_engines_folder_is_named(tmp_path, capsys, index, kind, hint):
    folder = tmp_path / "out"
    folder.mkdir()
    for name, content in index.items():
        (folder / name).write_text(json.dumps(content))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(folder)
    assert err.value.message == f"{folder} is {kind}, not a checkpoint"
    assert hint in err.value.hint
    assert cli_exit_code(["onnx", str(folder), "-o", str(tmp_path / "x")]) == 1
    assert f"Error: {folder} is {kind}, not a checkpoint" in capsys.readouterr().err


def test_fine_tuning_output_folder_points_at_its_checkpoint(ckpt, tmp_path):
    shutil.copytree(ckpt, tmp_path / "run" / "ckpt")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "run")
    assert err.value.message == f"{tmp_path / 'run'} is a fine-tuning output folder, not a checkpoint"
    assert str(tmp_path / "run" / "ckpt") in err.value.hint
