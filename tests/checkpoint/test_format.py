import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ilora_export
import ilora_export.checkpoint.format as fmt
from ilora_export.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.data.prompts import default_templates
from ilora_export.errors import CheckpointError
from ilora_export.model.prompting import PromptBuilder
from tests.factories import make_tiny_ilora


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_llama_dir, toy_data_dir):
    ds = load_dataset(toy_data_dir)
    model = make_tiny_ilora(tiny_llama_dir)
    path = save_checkpoint(
        model,
        tmp_path_factory.mktemp("ckpt") / "ckpt",
        base_model_ref=str(tiny_llama_dir),
        base_model_dir=tiny_llama_dir,
        catalogue=ds.catalogue,
        templates=default_templates(),
    )
    return model, path, ds


def _logits(model, ds):
    enc = PromptBuilder(model.tokenizer, ds.catalogue.title, default_templates())
    rows = build_eval_set(ds, "test", seed=0).rows[:3]
    b = enc.collate([enc.encode(r.seq, r.len_seq, r.candidates) for r in rows])
    with torch.no_grad():
        return model(b.input_ids, b.attention_mask, b.seq, b.len_seq, b.candidates).logits


def test_round_trip_gives_identical_logits(saved):
    model, path, ds = saved
    loaded = ilora_export.load_checkpoint(path)
    assert torch.equal(_logits(model, ds), _logits(loaded.model, ds))
    assert loaded.catalogue.titles == ds.catalogue.titles and loaded.catalogue.pad_id == ds.catalogue.pad_id
    assert loaded.templates.templates == default_templates().templates
    assert loaded.fingerprint_ok


def test_config_documents_the_model(saved):
    model, path, _ = saved
    cfg = read_checkpoint(path).config
    assert cfg["tokens"] == model.token_ids
    assert cfg["adapter"]["r"] == 8 and cfg["adapter"]["num_experts"] == 4
    assert cfg["base_model"]["hidden_size"] == 64 and cfg["sasrec"]["item_num"] == 50
    assert set(cfg["files"]) >= {
        "adapter.safetensors",
        "sasrec.safetensors",
        "catalogue.json",
        "tokenizer/tokenizer.json",
    }


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


def test_truncated_file_is_named(saved, tmp_path):
    ckpt = _copy(saved[1], tmp_path)
    data = (ckpt / "adapter.safetensors").read_bytes()
    (ckpt / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"adapter\.safetensors: sha256"):
        load_checkpoint(ckpt)


def test_missing_config_or_directory(saved, tmp_path):
    ckpt = _copy(saved[1], tmp_path)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        read_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope")


def test_crash_mid_save_leaves_nothing_that_loads(saved, tmp_path, monkeypatch, tiny_llama_dir):
    model, path, ds = saved
    target = _copy(path, tmp_path)  # an existing, valid checkpoint to overwrite
    calls = {"n": 0}
    real = fmt.save_file

    def crash_on_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("power cut")
        return real(*a, **k)

    monkeypatch.setattr(fmt, "save_file", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(
            model,
            target,
            base_model_ref="x",
            base_model_dir=tiny_llama_dir,
            catalogue=ds.catalogue,
            templates=default_templates(),
        )
    assert read_checkpoint(target).config == read_checkpoint(path).config  # the old one is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(
            model,
            tmp_path / "fresh",
            base_model_ref="x",
            base_model_dir=tiny_llama_dir,
            catalogue=ds.catalogue,
            templates=default_templates(),
        )
    assert not (tmp_path / "fresh").exists()


def _other_base(tmp_path, tiny_llama_dir, **overrides):
    cfg = LlamaConfig.from_pretrained(tiny_llama_dir)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    out = tmp_path / "other"
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in tiny_llama_dir.glob("tokenizer*"):
        shutil.copy(f, out)
    return out


def test_base_model_of_another_width_is_refused(saved, tmp_path, tiny_llama_dir):
    other = _other_base(tmp_path, tiny_llama_dir, hidden_size=32, head_dim=8)
    with pytest.raises(CheckpointError, match="hidden_size=64"):
        load_checkpoint(saved[1], base_model=str(other))


def test_adapter_shapes_must_match_the_base_model(saved, tmp_path, tiny_llama_dir):
    other = _other_base(tmp_path, tiny_llama_dir, intermediate_size=96)
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(saved[1], base_model=str(other))
