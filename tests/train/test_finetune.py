import json

import pytest
import torch
from safetensors.torch import load_file

import ilora_export.train.finetune as ft
from ilora_export.checkpoint import read_checkpoint
from ilora_export.errors import IloraError
from tests.conftest import tiny_recipe


def test_tiny_run_writes_a_valid_checkpoint_and_evaluates(tiny_run):
    info = read_checkpoint(tiny_run.checkpoint)
    assert info.config["extra"]["step"] == 6
    assert info.config["adapter"]["num_experts"] == 4 and info.config["adapter"]["scaling"] == 8.0
    assert tiny_run.eval_summary["rows"] == 4
    run_dir = tiny_run.checkpoint.parent
    log = json.loads((run_dir / "train_log.json").read_text())
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "stage1" / "sasrec.safetensors").is_file()  # no pretrained SASRec: stage 1 ran
    assert (run_dir / "eval-test" / "predictions.csv").is_file()


def test_training_moves_the_adapter_and_only_the_adapter(tiny_run, tiny_llama_dir):
    adapter = load_file(tiny_run.checkpoint / "adapter.safetensors")
    lora_b = [v for k, v in adapter.items() if ".lora_B." in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero
    assert any(k.startswith("gate_net.") for k in adapter) and any(k.startswith("projector.") for k in adapter)
    base = load_file(tiny_llama_dir / "model.safetensors")
    assert not any(k in base for k in adapter)  # nothing of the frozen base is stored


def _crash_after_first_save(monkeypatch):
    real = ft._save_state

    def save_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(ft, "_save_state", save_then_crash)


def test_interrupted_run_resumes_to_the_same_adapter(tmp_path, monkeypatch, tiny_llama_dir, toy_data_dir):
    full = ft.finetune(tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "full", eval_rows=0), progress=False)
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "resumed", eval_rows=0)
    with monkeypatch.context() as m:
        _crash_after_first_save(m)
        with pytest.raises(KeyboardInterrupt):
            ft.finetune(recipe, progress=False)
    assert json.loads((tmp_path / "resumed" / "train_state" / "state.json").read_text())["step"] == 3
    resumed = ft.finetune(recipe, progress=False)
    assert resumed.steps == 6
    a = load_file(full.checkpoint / "adapter.safetensors")
    b = load_file(resumed.checkpoint / "adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resumed_run_logs_what_an_uninterrupted_one_logs(tmp_path, monkeypatch, tiny_llama_dir, toy_data_dir):
    # log_every=2 with save_every=3: the loss logged at step 4 averages steps 3 and 4, across the resumption
    kwargs = {"eval_rows": 0, "log_every": 2, "save_every": 3}
    full = ft.finetune(tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "full", **kwargs), progress=False)
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "resumed", **kwargs)
    with monkeypatch.context() as m:
        _crash_after_first_save(m)
        with pytest.raises(KeyboardInterrupt):
            ft.finetune(recipe, progress=False)
    resumed = ft.finetune(recipe, progress=False)
    logged = [json.loads((r.checkpoint.parent / "train_log.json").read_text()) for r in (full, resumed)]
    assert [r["step"] for r in logged[0]] == [2, 4, 6]
    assert logged[0] == logged[1]
    assert full.final_loss == resumed.final_loss


def test_non_finite_gradient_stops_before_the_optimizer_step():
    p = torch.zeros(3, requires_grad=True)
    torch.sqrt(p).sum().backward()  # a finite loss (0) whose gradient is infinite
    with pytest.raises(IloraError, match=r"^gradient norm became inf at step 7$") as err:
        ft.clip_gradients([p], max_norm=1.0, step=7)
    assert "train.lr" in err.value.hint
    q = torch.ones(3, requires_grad=True)
    (q * 4).sum().backward()
    assert ft.clip_gradients([q], max_norm=1.0, step=1) == pytest.approx(48**0.5)


def test_diverging_training_stops_with_an_error(tmp_path, tiny_llama_dir, toy_data_dir):
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "x", eval_rows=0, warmup_steps=0, save_every=1)
    recipe.train.lr = 1e30  # past recipe validation (which refuses it): the loop must stop whatever the cause
    with pytest.raises(IloraError, match=r"^(loss|gradient norm) became (nan|inf) at step 2$") as err:
        ft.finetune(recipe, progress=False)
    assert "train.lr" in err.value.hint
    assert read_checkpoint(tmp_path / "x" / "ckpt").config["extra"]["step"] == 1  # the last finite one is kept


def test_diverging_stage1_stops_naming_the_sasrec_learning_rate(tmp_path, tiny_llama_dir, toy_data_dir):
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "x", eval_rows=0)
    recipe.sasrec.lr = 1e30
    with pytest.raises(IloraError, match=r"^stage 1: SASRec weight \S+ became nan$") as err:
        ft.finetune(recipe, progress=False)
    assert "sasrec.lr" in err.value.hint
    assert not (tmp_path / "x" / "stage1").exists()  # nothing kept for a later run to reuse


def test_same_seed_same_adapter_different_seed_differs(tmp_path, tiny_llama_dir, toy_data_dir):
    runs = [
        ft.finetune(
            tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / name, max_steps=2, eval_rows=0), progress=False
        )
        for name in ("a", "b")
    ]
    a, b = (load_file(r.checkpoint / "adapter.safetensors") for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "c", max_steps=2, eval_rows=0)
    recipe.seed = 4
    c = load_file(ft.finetune(recipe, progress=False).checkpoint / "adapter.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_single_expert_is_the_lora_baseline(tmp_path, tiny_llama_dir, toy_data_dir):
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "lora", max_steps=1, eval_rows=0)
    recipe.adapter.num_experts = 1
    info = read_checkpoint(ft.finetune(recipe, progress=False).checkpoint)
    assert info.config["adapter"]["num_experts"] == 1 and info.config["adapter"]["scaling"] == 2.0


def test_pretrained_sasrec_for_another_catalogue_is_refused(tmp_path, tiny_llama_dir, toy_data_dir):
    from tests.factories import ref_path

    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "x")
    recipe.sasrec.pretrained = str(ref_path("rec_model", "lastfm.pt"))
    with pytest.raises(IloraError, match="4606 items"):
        ft.finetune(recipe, progress=False)


def test_unknown_target_module_is_a_user_error(tmp_path, tiny_llama_dir, toy_data_dir):
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "x")
    recipe.adapter.target_modules = ["q_proj", "c_attn"]
    with pytest.raises(IloraError, match="c_attn"):
        ft.finetune(recipe, progress=False)
