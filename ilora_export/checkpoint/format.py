"""Writing a checkpoint directory and reading its tensors (the format itself: ``ilora_export.artifacts.checkpoint``).

A checkpoint is written into a temporary sibling directory and renamed into place, and
``config.json`` lists the sha256 of every other file: a crash mid-save never leaves a directory that
loads as valid, and a truncated or edited file is reported by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ilora_export.artifacts.checkpoint import (
    ADAPTER,
    ADDED_TOKENS,
    CATALOGUE,
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    PROMPTS,
    SASREC,
    TOKENIZER,
    base_model_fingerprint,
)
from ilora_export.artifacts.kinds import CHECKPOINT, of_kind
from ilora_export.errors import CheckpointError
from ilora_export.fileio import atomic_dir, hash_tree


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def non_finite(tensors: Mapping[str, torch.Tensor]) -> tuple[str, float] | None:
    """(name, value) of the first tensor (by name) holding a NaN or an infinity, or None."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point():
            bad = t[~torch.isfinite(t)]
            if bad.numel():
                return name, float(bad[0])
    return None


def save_checkpoint(
    model, path, *, base_model_ref: str, base_model_dir: Path, catalogue, templates, extra: dict | None = None
) -> Path:
    """Write ``model`` (an ILoRAModel) as a checkpoint directory at ``path``, atomically.

    Weights holding a NaN or an infinity are refused before anything is written."""
    path = Path(path)
    tensors = {
        ADAPTER: _contiguous(model.adapter_state_dict()),
        ADDED_TOKENS: _contiguous(model.added_token_rows()),
        SASREC: _contiguous(model.sasrec.state_dict()),
    }
    for part in tensors.values():
        if bad := non_finite(part):
            raise CheckpointError(
                f"{path}: {bad[0]} holds non-finite values ({bad[1]}); not saved",
                "the weights diverged (or their source is broken): lower the learning rate and train again",
            )
    with atomic_dir(path, replaceable=of_kind(CHECKPOINT), what="a checkpoint") as tmp:
        for name, part in tensors.items():
            save_file(part, tmp / name)
        model.tokenizer.save_pretrained(tmp / TOKENIZER)
        titles = [catalogue.titles[i] for i in range(catalogue.num_items)]
        (tmp / CATALOGUE).write_text(
            json.dumps({"pad_id": catalogue.pad_id, "titles": titles}, ensure_ascii=False), encoding="utf-8"
        )
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
            "prompts": {"source": str(templates.source), "count": len(templates.templates), "style": templates.style},
            "files": hash_tree(tmp, exclude=CONFIG),
        } | ({"extra": extra} if extra else {})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return path


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's safetensors file; a NaN or an infinity in any of them is refused."""
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors ({err})") from None
    if bad := non_finite(tensors):
        raise CheckpointError(
            f"{path}: {bad[0]} holds non-finite values ({bad[1]})",
            "the weights diverged when they were trained; train again with a lower learning "
            "rate, or use an earlier checkpoint",
        )
    return tensors
