"""The checkpoint directory: what a fine-tuned iLoRA model is, independent of how it was trained.

::

    ckpt/
      config.json            format version, base-model reference + fingerprint, special-token ids,
                             adapter / gate / projector / SASRec hyperparameters, sha256 of every file
      adapter.safetensors    expert bank (lora_A/lora_B per wrapped projection), gate_net.*, projector.*
      added_tokens.safetensors  embedding rows of the added tokens ([PAD], [PH], [HistoryEmb], ...)
      sasrec.safetensors     SASRec weights
      tokenizer/             the tokenizer with the added tokens
      catalogue.json         item titles by id, padding id
      prompts.txt            prompt templates the model was trained with

A checkpoint is written into a temporary sibling directory and renamed into place, and
``config.json`` lists the sha256 of every other file: a crash mid-save never leaves a directory that
loads as valid, and a truncated or edited file is reported by name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ilora_export.errors import CheckpointError
from ilora_export.fileio import atomic_dir, find_hash_problem, hash_tree

FORMAT = "ilora-export/checkpoint"
FORMAT_VERSION = 1
CONFIG = "config.json"
ADAPTER = "adapter.safetensors"
ADDED_TOKENS = "added_tokens.safetensors"
SASREC = "sasrec.safetensors"
TOKENIZER = "tokenizer"
CATALOGUE = "catalogue.json"
PROMPTS = "prompts.txt"


def base_model_fingerprint(base_dir: Path) -> str:
    """Cheap identity of a base-model folder: its config.json plus the names and sizes of its weights."""
    base_dir = Path(base_dir)
    h = hashlib.sha256((base_dir / "config.json").read_bytes())
    for p in sorted(base_dir.glob("*.safetensors")) + sorted(base_dir.glob("*.bin")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(model, path, *, base_model_ref: str, base_model_dir: Path, catalogue,
                    templates, extra: dict | None = None) -> Path:
    """Write ``model`` (an ILoRAModel) as a checkpoint directory at ``path``, atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(_contiguous(model.adapter_state_dict()), tmp / ADAPTER)
        save_file(_contiguous(model.added_token_rows()), tmp / ADDED_TOKENS)
        save_file(_contiguous(model.sasrec.state_dict()), tmp / SASREC)
        model.tokenizer.save_pretrained(tmp / TOKENIZER)
        titles = [catalogue.titles[i] for i in range(catalogue.num_items)]
        (tmp / CATALOGUE).write_text(json.dumps({"pad_id": catalogue.pad_id, "titles": titles},
                                                ensure_ascii=False), encoding="utf-8")
        (tmp / PROMPTS).write_text("".join(t + "\n" for t in templates.templates), encoding="utf-8")
        llm_cfg = model.llm.config
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "base_model": {
                "ref": base_model_ref,
                "path": str(Path(base_model_dir).resolve()),
                "fingerprint": base_model_fingerprint(base_model_dir),
                "model_type": llm_cfg.model_type,
                "hidden_size": llm_cfg.hidden_size,
                "num_hidden_layers": llm_cfg.num_hidden_layers,
                "vocab_size_before_tokens": min(model.token_ids.values()),
            },
            "tokens": model.token_ids,
            "adapter": model.spec.to_dict(),
            "sasrec": model.sasrec.config(),
            "catalogue": {"num_items": catalogue.num_items, "pad_id": catalogue.pad_id},
            "prompts": {"source": str(templates.source), "count": len(templates.templates)},
            "files": hash_tree(tmp, exclude=CONFIG),
        } | ({"extra": extra} if extra else {})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return path


@dataclass
class CheckpointInfo:
    """A validated checkpoint directory (files present, hashes match); nothing heavy loaded."""

    path: Path
    config: dict


def read_checkpoint(path) -> CheckpointInfo:
    """Validate a checkpoint directory's config and file hashes."""
    path = Path(path)
    hint = "point at a directory written by `ilora-export finetune` (its ckpt/ folder)"
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found", hint)
    cfg_path = path / CONFIG
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{cfg_path}: missing; {path} is not a complete checkpoint", hint) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{cfg_path}: unreadable ({err})", hint) from None
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: not an {FORMAT} v{FORMAT_VERSION} config", hint)
    problem = find_hash_problem(path, config.get("files", {}))
    if problem and problem[1] == "missing":
        raise CheckpointError(f"{problem[0]}: listed in config.json but missing", "the checkpoint is incomplete; "
                              "re-save it")
    if problem:
        raise CheckpointError(f"{problem[0]}: sha256 does not match config.json (truncated or modified)",
                              "the checkpoint is corrupt; re-save it from training")
    for required in (ADAPTER, ADDED_TOKENS, SASREC, CATALOGUE, PROMPTS):
        if required not in config.get("files", {}):
            raise CheckpointError(f"{path}: config.json lists no {required}", hint)
    return CheckpointInfo(path, config)


def read_catalogue(file: Path):
    """A ``catalogue.json`` (as a checkpoint or an export holds it) as a Catalogue."""
    from ilora_export.data.llara import Catalogue

    cat = json.loads(Path(file).read_text(encoding="utf-8"))
    return Catalogue(titles=dict(enumerate(cat["titles"])), pad_id=cat["pad_id"], source=Path(file))


def read_templates(file: Path, source: str):
    """A ``prompts.txt`` (one template per line) as PromptTemplates."""
    from ilora_export.data.prompts import PromptTemplates

    lines = Path(file).read_text(encoding="utf-8").split("\n")
    return PromptTemplates(tuple(t for t in lines if t), source=source)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors ({err})") from None
