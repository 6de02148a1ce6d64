"""Session fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real converted SmolLM2-135M-Instruct folder (converted once, then cached)."""
    from ilora_export.base.fetch import fetch_default_base

    return fetch_default_base(progress=False)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A random 2-layer Llama (hidden 64, 4 heads / 2 kv heads) with SmolLM2's real tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    ref = AutoConfig.from_pretrained(smollm2_dir, local_files_only=True)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=ref.tie_word_embeddings,
        bos_token_id=ref.bos_token_id,
        eos_token_id=ref.eos_token_id,
        pad_token_id=ref.pad_token_id,
        rms_norm_eps=ref.rms_norm_eps,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def tiny_recipe(tiny_llama_dir, data_dir, output_dir, **train):
    """A recipe over the tiny Llama and a synthetic dataset: seconds to run end to end."""
    from ilora_export.train.recipe import recipe_from_dict

    return recipe_from_dict(
        {
            "output_dir": str(output_dir),
            "base_model": str(tiny_llama_dir),
            "seed": 3,
            "data": {"root": str(data_dir), "eval_split": "test"},
            "sasrec": {"hidden": 16, "epochs": 2, "batch_size": 64},
            "adapter": {"r": 8, "alpha": 16, "dropout": 0.1, "num_experts": 4, "gate": "dense"},
            "train": {
                "max_steps": 6,
                "batch_size": 2,
                "save_every": 3,
                "log_every": 1,
                "warmup_steps": 2,
                "lr": 1e-3,
                "eval_rows": 4,
            }
            | train,
        }
    )


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> Path:
    """A synthetic LLaRA dataset: 50 items, 200/12/12 rows."""
    from ilora_export.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("toy_data") / "toy")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_llama_dir, toy_data_dir):
    """One finished tiny fine-tuning run (stage 1 SASRec trained, 6 adapter steps, final eval)."""
    from ilora_export.train.finetune import finetune

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    return finetune(tiny_recipe(tiny_llama_dir, toy_data_dir, out), progress=False)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_llama_dir, toy_data_dir):
    """(checkpoint, fp32 export folder) of the random-bank tiny model."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")
    from ilora_export.export.package import export_checkpoint
    from tests.factories import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny_export")
    ckpt = make_tiny_checkpoint(tiny_llama_dir, toy_data_dir, root / "ckpt")
    return ckpt, export_checkpoint(ckpt, root / "onnx")


@pytest.fixture(scope="session")
def tiny_export_fp16(tmp_path_factory, tiny_export):
    """The fp16 export of ``tiny_export``'s checkpoint (the graph TensorRT's --fp16 builds from)."""
    from ilora_export.export.package import export_checkpoint

    return export_checkpoint(tiny_export[0], tmp_path_factory.mktemp("tiny_export_fp16") / "onnx", dtype="fp16")


def _mount(args: list[str], target: Path) -> bool:
    import subprocess

    result = subprocess.run(["mount", *args, str(target)], capture_output=True)
    return result.returncode == 0


def _umount(target: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def full_disk_dir(tmp_path) -> Path:
    """A folder on a real, full file system (a 256 KiB tmpfs filled up); skipped where mounting is not allowed."""
    import os

    target = tmp_path / "full"
    target.mkdir()
    if os.geteuid() != 0 or not _mount(["-t", "tmpfs", "-o", "size=256k", "tmpfs"], target):
        pytest.skip("mounting a small tmpfs needs root (or is not permitted here)")
    try:
        fd = os.open(target / ".filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield target
    finally:
        _umount(target)


@pytest.fixture
def readonly_dir(tmp_path) -> Path:
    """A folder no write may enter: chmod 0555 for a normal user, a read-only bind mount for root."""
    import os

    target = tmp_path / "readonly"
    target.mkdir()
    (target / "existing.txt").write_text("kept\n")
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    if not (_mount(["--bind", str(target)], target) and _mount(["-o", "remount,bind,ro"], target)):
        _umount(target)
        pytest.skip("a read-only bind mount is not permitted here")
    try:
        yield target
    finally:
        _umount(target)
