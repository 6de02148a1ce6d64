"""Running a fine-tune again: stage 1 reused only when identical, the trainer state checked, the checkpoint ensured."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ilora_export.train.finetune as ft
import ilora_export.train.sasrec as sasrec_training
from ilora_export.checkpoint import read_checkpoint
from ilora_export.data.synthetic import write_synthetic_dataset
from ilora_export.train.recipe import recipe_to_dict
from tests.conftest import tiny_recipe
from tests.factories import cli_exit_code


def _quick(tiny_llama_dir, data_dir, out, **train):
    """One or two adapter steps, no final evaluation."""
    return tiny_recipe(tiny_llama_dir, data_dir, out, **({"max_steps": 1, "eval_rows": 0} | train))


@pytest.fixture
def stage1_runs(monkeypatch):
    """How many times stage 1 trained a SASRec."""
    calls = []
    real = sasrec_training.train_sasrec

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sasrec_training, "train_sasrec", counting)
    return calls


def _sasrec_config(result) -> dict:
    return read_checkpoint(result.checkpoint).config["sasrec"]


def test_stage1_is_reused_when_identical_and_rebuilt_without_resume(
    tmp_path, tiny_llama_dir, toy_data_dir, stage1_runs
):
    out = tmp_path / "run"
    ft.finetune(_quick(tiny_llama_dir, toy_data_dir, out), progress=False)
    assert len(stage1_runs) == 1
    (out / "stage1" / "notes.txt").write_text("mine")
    messages = []
    ft.finetune(_quick(tiny_llama_dir, toy_data_dir, out, max_steps=2), progress=False, log=messages.append)
    assert len(stage1_runs) == 1  # same data, SASRec settings and seed: reused, stage 2 resumed
    assert any("reusing" in m and "stage1" in m for m in messages)
    messages.clear()
    ft.finetune(_quick(tiny_llama_dir, toy_data_dir, out), progress=False, resume=False, log=messages.append)
    assert len(stage1_runs) == 2
    assert any("training SASRec" in m for m in messages)
    assert (out / "stage1" / "notes.txt").read_text() == "mine"  # nothing the tool did not write is deleted


def test_stage1_of_another_dataset_is_rebuilt(tmp_path, tiny_llama_dir, toy_data_dir):
    out = tmp_path / "run"
    ft.finetune(_quick(tiny_llama_dir, toy_data_dir, out), progress=False)
    other = write_synthetic_dataset(tmp_path / "other", num_items=30)
    messages = []
    result = ft.finetune(_quick(tiny_llama_dir, other, out), progress=False, resume=False, log=messages.append)
    assert _sasrec_config(result)["item_num"] == 30
    assert any("training SASRec" in m for m in messages)


def test_stage1_of_other_sasrec_settings_is_rebuilt_and_not_resumed_over(
    tmp_path, tiny_llama_dir, toy_data_dir, capsys
):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_to_dict(_quick(tiny_llama_dir, toy_data_dir, out))))
    assert cli_exit_code(["finetune", str(recipe)]) == 0
    capsys.readouterr()
    # the trainer state was trained with the SASRec of hidden 16: resuming it over another one is refused
    assert cli_exit_code(["finetune", str(recipe), "sasrec.hidden=32"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"Error: {out / 'train_state'}: trained with another stage 1 (sasrec.hidden: 16 -> 32)" in err
    assert "Hint: " in err and "--no-resume" in err
    assert cli_exit_code(["finetune", str(recipe), "sasrec.hidden=32", "--no-resume"]) == 0
    assert "training SASRec" in capsys.readouterr().out
    assert read_checkpoint(out / "ckpt").config["sasrec"]["hidden"] == 32


# ---------------------------------------------------------------- a finished run, run again


def test_finished_run_run_again_restores_a_missing_or_broken_checkpoint(tmp_path, tiny_llama_dir, toy_data_dir):
    recipe = _quick(tiny_llama_dir, toy_data_dir, tmp_path / "run", max_steps=2)
    first = ft.finetune(recipe, progress=False)
    adapter = load_file(first.checkpoint / "adapter.safetensors")
    shutil.rmtree(first.checkpoint)
    messages = []
    again = ft.finetune(recipe, progress=False, log=messages.append)
    assert again.steps == 2 and again.checkpoint == first.checkpoint
    assert read_checkpoint(again.checkpoint).config["extra"]["step"] == 2
    resaved = load_file(again.checkpoint / "adapter.safetensors")
    assert all(torch.equal(adapter[k], resaved[k]) for k in adapter)
    assert any("re-saving" in m for m in messages)
    data = (again.checkpoint / "adapter.safetensors").read_bytes()
    (again.checkpoint / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    ft.finetune(recipe, progress=False)
    assert read_checkpoint(again.checkpoint).config["extra"]["step"] == 2


# ---------------------------------------------------------------- a damaged trainer state


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_llama_dir, toy_data_dir):
    """A run stopped after 1 of 2 steps (its recipe file, its output folder)."""
    root = tmp_path_factory.mktemp("stopped")
    recipe = _quick(tiny_llama_dir, toy_data_dir, root / "run", max_steps=1, save_every=1)
    ft.finetune(recipe, progress=False)
    (root / "r.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe)))
    return root / "r.yaml", root / "run"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda s: _truncate(s / "optimizer.pt"), "optimizer.pt"),
        (lambda s: _truncate(s / "trainable.safetensors"), "trainable.safetensors"),
        (lambda s: (s / "state.json").write_text('{"step": 1, "log": ['), "state.json"),
        (
            lambda s: (s / "state.json").write_text(
                json.dumps({k: v for k, v in json.loads((s / "state.json").read_text()).items() if k != "step"})
            ),
            "state.json: step: missing required key",
        ),
        (lambda s: (s / "state.json").write_text("[]"), "state.json"),
    ],
    ids=["optimizer-truncated", "trainable-truncated", "state-broken-json", "state-without-step", "state-a-list"],
)
def test_damaged_trainer_state_is_an_error_with_a_hint(stopped_run, tmp_path, capsys, damage, named):
    recipe, run = stopped_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    damage(out / "train_state")
    assert cli_exit_code(["finetune", str(recipe), f"output_dir={out}", "train.max_steps=2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-2].startswith(f"Error: {out / 'train_state' / named}")
    assert lines[-1].startswith("Hint: ") and "--no-resume" in lines[-1]
    assert cli_exit_code(["finetune", str(recipe), f"output_dir={out}", "train.max_steps=2", "--no-resume"]) == 0


@pytest.mark.parametrize("folder", ["ckpt", "train_state"])
def test_a_users_file_inside_ckpt_or_train_state_stops_the_run_before_training(stopped_run, tmp_path, capsys, folder):
    recipe, run = stopped_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / folder / "onnx").mkdir()
    (out / folder / "onnx" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert cli_exit_code(["finetune", str(recipe), f"output_dir={out}", "train.max_steps=2"]) == 1
    err = capsys.readouterr().err
    assert f"Error: {out / folder} is not a" in err and "onnx/notes.txt" in err and "Traceback" not in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
