"""Opening a model folder to run: an export directory (the verified manifest plus what the generator
needs on the host), a checkpoint's prompt assets, and :func:`open_backend` for any of the three kinds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ilora_export.artifacts.checkpoint import CATALOGUE as CHECKPOINT_CATALOGUE
from ilora_export.artifacts.checkpoint import PROJECT_PROMPTS, read_checkpoint
from ilora_export.artifacts.engines import engines_export_dir
from ilora_export.artifacts.kinds import CHECKPOINT, EXPORT, folder_kind
from ilora_export.artifacts.manifest import (
    CATALOGUE,
    EMBEDDINGS,
    PROMPTS,
    TOKENIZER,
    ExportInfo,
    read_manifest,
    verify_export_files,
)
from ilora_export.data.llara import Catalogue, read_catalogue
from ilora_export.data.prompts import read_templates
from ilora_export.errors import ExportError, IloraError
from ilora_export.model.generate import min_new_tokens_of
from ilora_export.runtime.generator import PromptAssets


@dataclass
class LoadedExport:
    info: ExportInfo
    assets: PromptAssets
    embeddings: np.ndarray  # [V, H] token embeddings in the decoder's dtype (looked up on the host)

    @property
    def path(self) -> Path:
        return self.info.path


def load_export(path, *, verify_files: bool = True) -> LoadedExport:
    """Read and verify ``path`` (hashes of every file against manifest.json); no session is created."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    info = read_manifest(path, verify_files=verify_files)
    m = info.manifest
    tokenizer = AutoTokenizer.from_pretrained(info.path / TOKENIZER, local_files_only=True)
    tokenizer.padding_side = "left"
    if {k: tokenizer.convert_tokens_to_ids(k) for k in m["tokens"]} != m["tokens"]:
        raise ExportError(
            f"{info.path / TOKENIZER}: special-token ids differ from manifest.json",
            "the export is inconsistent; export again",
        )
    try:
        embeddings = load_file(info.path / EMBEDDINGS)["input_embeddings"]
    except (SafetensorError, OSError, KeyError) as err:
        raise ExportError(f"{info.path / EMBEDDINGS}: unreadable ({err})", "export again") from None
    style = m.get("prompts_style", PROJECT_PROMPTS)  # exports written before it are the project's
    assets = PromptAssets(
        tokenizer,
        read_catalogue(info.path / CATALOGUE),
        read_templates(info.path / PROMPTS, m["prompts_source"], style),
        dict(m["tokens"]),
        set(m["eos_token_ids"]),
        min_new_tokens_of(style),
    )
    return LoadedExport(info, assets, embeddings)


def checkpoint_assets(loaded) -> PromptAssets:
    """Tokenizer, catalogue, templates, token and EOS ids, and the first-step EOS rule of a LoadedCheckpoint:
    what the shared generator needs (as ``LoadedExport.assets``)."""
    from ilora_export.model.generate import eos_token_ids

    tok = loaded.model.tokenizer
    return PromptAssets(
        tok,
        loaded.catalogue,
        loaded.templates,
        dict(loaded.model.token_ids),
        eos_token_ids(tok, loaded.model.llm.generation_config),
        min_new_tokens_of(loaded.templates.style),
    )


BACKENDS = ("torch", "ort", "trt")


def _check_target_kind(target, backend: str) -> None:
    """IloraError when ``target`` is not the kind of folder ``backend`` runs."""
    kind = folder_kind(target)
    if backend == "torch" and kind == EXPORT:
        raise IloraError(
            f"{target} is an export directory; the torch backend evaluates checkpoints",
            "use --backend ort for an export, or pass the checkpoint folder",
        )
    if backend == "ort" and kind == CHECKPOINT:
        raise IloraError(
            f"{target} is a checkpoint; the ort backend runs an export directory",
            f"export it first: ilora-export onnx {target} -o EXPORT_DIR",
        )
    if backend not in BACKENDS:
        raise IloraError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")


def model_facts(target, backend: str = "torch") -> tuple[Catalogue, int]:
    """The model's catalogue and history length (SASRec state size), from the verified index of
    ``target`` (checkpoint, export or engines folder) without loading any weights: what a dataset
    must match before evaluation starts."""
    _check_target_kind(target, backend)
    if backend == "torch":
        ckpt = read_checkpoint(target)
        return read_catalogue(ckpt.path / CHECKPOINT_CATALOGUE), ckpt.config["sasrec"]["state_size"]
    info = read_manifest(target if backend == "ort" else engines_export_dir(target), verify_files=False)
    verify_export_files(info, [CATALOGUE])  # the rest is verified when the backend opens the export
    return read_catalogue(info.path / CATALOGUE), info.manifest["model"]["state_size"]


def open_backend(
    target,
    backend: str = "torch",
    *,
    device: str = "cpu",
    base_model: str | None = None,
    threads: int | None = None,
    bank=None,
    bank_mode: str = "fused",
):
    """(backend, assets) for a checkpoint (torch), an export directory (ort) or an engines folder (trt)."""
    _check_target_kind(target, backend)
    if backend == "torch":
        import torch

        from ilora_export.checkpoint import load_checkpoint
        from ilora_export.runtime.torch_backend import TorchBackend

        if device == "cuda" and not torch.cuda.is_available():
            raise IloraError(
                "--device cuda: PyTorch sees no CUDA device", "install a CUDA build of PyTorch, or use --device cpu"
            )
        if threads:
            torch.set_num_threads(threads)
        loaded = load_checkpoint(target, base_model=base_model, device=device)
        return TorchBackend(loaded.model, device), checkpoint_assets(loaded)
    if backend == "ort":
        from ilora_export.runtime.ort_backend import OrtBackend

        export = load_export(target)
        return OrtBackend(export, device=device, threads=threads, bank=bank, bank_mode=bank_mode), export.assets
    from ilora_export.runtime.trt_backend import TrtBackend

    export = load_export(engines_export_dir(target))
    return TrtBackend(target, export), export.assets
