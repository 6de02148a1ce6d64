"""The > 2 GB path: a checkpoint over a base model with Llama-2-7B's layer shapes (fewer layers).

Two layers of width 4096 / 11008 with untied 49k-row embeddings are about 3.2 GB in fp32, past
protobuf's 2 GB limit, so the graph only exports with its weights in the external-data file. Slow:
run with ``python -m pytest -m slow tests/export/test_large.py`` (peak RSS 14 GB, 90 s on 2 cores).
"""

import json

import pytest

from tests.factories import make_tiny_checkpoint

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.mark.slow
def test_llama2_7b_shaped_checkpoint_exports_past_2gb(smollm2_dir, toy_data_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ilora_export.export.package import export_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    base = tmp_path / "llama2-7b-shaped"
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)  # SmolLM2's tokenizer: a 49k vocabulary, larger than Llama-2's 32k
    ckpt = make_tiny_checkpoint(base, toy_data_dir, tmp_path / "ckpt")
    out = export_checkpoint(ckpt, tmp_path / "onnx", validate=False)
    data = out / "decoder.onnx.data"
    assert data.stat().st_size > 2 * 1024**3 and (out / "decoder.onnx").stat().st_size < 50 * 1024**2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["hidden_size"] == 4096 and manifest["model"]["num_layers"] == 2
    # ORT loads the external data and agrees with PyTorch on real prompts
    from ilora_export.checkpoint import load_checkpoint
    from ilora_export.export.package import validate_export

    report = validate_export(out, load_checkpoint(ckpt).model)
    assert report["greedy_token_agreement"] == 1.0
