from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ilora_export.base.loading import check_base_model_dir, load_base_model
from ilora_export.errors import BaseModelError, IloraError


@pytest.fixture
def tiny_copy(tmp_path, tiny_llama_dir) -> Path:
    """A copy of the tiny Llama folder that a test may break."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "tiny"))


def message(path, exc=BaseModelError) -> str:
    with pytest.raises(exc) as info:
        check_base_model_dir(path)
    assert "\n" not in info.value.message and info.value.hint
    return info.value.message


def test_check_real_smollm2(smollm2_dir):
    cfg = check_base_model_dir(smollm2_dir)
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30


def test_check_and_load_tiny_llama(tiny_llama_dir):
    cfg = check_base_model_dir(tiny_llama_dir)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_key_value_heads"]) == (64, 2, 2)
    model, tok = load_base_model(tiny_llama_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.config._attn_implementation == "eager"
    assert len(tok) == 49152 == model.config.vocab_size
    ids = tok("Toy Story, Heat", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 49152)


def test_load_dtype_by_name(tiny_llama_dir):
    model, _ = load_base_model(tiny_llama_dir, dtype="bfloat16", attn_implementation="sdpa")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    with pytest.raises(IloraError, match="unknown dtype 'float7'"):
        load_base_model(tiny_llama_dir, dtype="float7")


def test_real_smollm2_answers(smollm2_dir):
    model, tok = load_base_model(smollm2_dir)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_bert_folder_is_not_a_causal_lm(tmp_path, tiny_llama_dir):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99)
    ).save_pretrained(folder)
    shutil.copy(tiny_llama_dir / "tokenizer.json", folder)
    assert message(folder) == f"{folder} is not a causal LM: config.json declares BertModel"
    with pytest.raises(BaseModelError):
        load_base_model(folder)


def test_missing_and_not_a_folder(tmp_path):
    assert message(tmp_path / "foo") == f"{tmp_path / 'foo'}: base model folder does not exist"
    (tmp_path / "f").write_text("x")
    assert message(tmp_path / "f") == f"{tmp_path / 'f'} is not a folder"
    (tmp_path / "empty").mkdir()
    assert message(tmp_path / "empty") == f"{tmp_path / 'empty'} has no config.json: not a Hugging Face model folder"


def test_bad_config(tiny_copy):
    cfg_file = tiny_copy / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text("{not json")
    assert message(tiny_copy).startswith(f"{cfg_file} is not valid JSON")
    cfg_file.write_text(json.dumps({**cfg, "model_type": "llamaXX"}))
    assert message(tiny_copy).startswith(f"{tiny_copy} declares model_type 'llamaXX', unknown to transformers")
    cfg_file.write_text(json.dumps({k: v for k, v in cfg.items() if k != "model_type"}))
    assert message(tiny_copy) == f"{cfg_file} declares no model_type"
    cfg_file.write_text(json.dumps({**cfg, "model_type": "t5", "architectures": None}))
    assert message(tiny_copy) == (
        f"{tiny_copy} is not a causal LM: model_type 't5' has no causal-LM model in transformers"
    )


def test_missing_weights(tiny_copy):
    (tiny_copy / "model.safetensors").unlink()
    assert message(tiny_copy).startswith(f"{tiny_copy} has no model weights")
    (tiny_copy / "model.Q4_0.gguf").write_bytes(b"GGUF")
    assert message(tiny_copy) == f"{tiny_copy} holds only GGUF weights; a safetensors or PyTorch model is needed"


def test_missing_shard_listed_in_index(tiny_copy):
    (tiny_copy / "model.safetensors").rename(tiny_copy / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert message(tiny_copy) == (
        f"{tiny_copy} is missing weight shard model-00002-of-00002.safetensors listed in model.safetensors.index.json"
    )


def test_missing_tokenizer(tiny_copy):
    (tiny_copy / "tokenizer.json").unlink()
    assert message(tiny_copy).startswith(f"{tiny_copy} has no tokenizer files")


def test_corrupt_weights_raise_base_model_error(tiny_copy):
    (tiny_copy / "model.safetensors").write_bytes(b"garbage" * 10)
    check_base_model_dir(tiny_copy)  # present: only loading can tell
    with pytest.raises(BaseModelError) as info:
        load_base_model(tiny_copy)
    assert info.value.message.startswith(f"{tiny_copy}: the model cannot be loaded")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tiny_llama_dir):
    with pytest.raises(IloraError, match="CUDA is not available"):
        load_base_model(tiny_llama_dir, device="cuda")
