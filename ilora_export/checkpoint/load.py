"""Loading a checkpoint directory back into an :class:`ILoRAModel`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ilora_export.checkpoint.format import (
    ADAPTER,
    ADDED_TOKENS,
    CATALOGUE,
    PROMPTS,
    SASREC,
    TOKENIZER,
    CheckpointInfo,
    base_model_fingerprint,
    read_catalogue,
    read_checkpoint,
    read_templates,
    read_tensors,
)
from ilora_export.data.llara import Catalogue
from ilora_export.data.prompts import PromptTemplates
from ilora_export.errors import CheckpointError


@dataclass
class LoadedCheckpoint:
    """A ready-to-run model plus what it needs to build prompts."""

    model: "ILoRAModel"  # noqa: F821
    catalogue: Catalogue
    templates: PromptTemplates
    info: CheckpointInfo
    base_model_dir: Path
    fingerprint_ok: bool = True  # False: same shapes, but the base folder's files differ from training

    def assets(self):
        """Tokenizer, catalogue, templates, token and EOS ids: what the shared generator needs."""
        from ilora_export.model.generate import eos_token_ids
        from ilora_export.runtime.generator import PromptAssets

        tok = self.model.tokenizer
        return PromptAssets(tok, self.catalogue, self.templates, dict(self.model.token_ids),
                            eos_token_ids(tok, self.model.llm.generation_config))


def _resolve_base(info: CheckpointInfo, base_model: str | None) -> Path:
    from ilora_export.base.fetch import resolve_base_model

    recorded = info.config["base_model"]
    if base_model is not None:
        return resolve_base_model(base_model)
    if Path(recorded["path"]).is_dir():
        return Path(recorded["path"])
    return resolve_base_model(recorded["ref"])


def load_checkpoint(path, *, base_model: str | None = None, device: str = "cpu",
                    dtype: torch.dtype = torch.float32) -> LoadedCheckpoint:
    """Validate and load a checkpoint directory.

    ``base_model`` overrides the recorded base-model location (a local folder, or "default"); it must
    be the same model the checkpoint was trained on (checked by shape and fingerprint).
    """
    from transformers import AutoTokenizer

    from ilora_export.base.loading import load_base_model
    from ilora_export.model.ilora import ILoRAModel
    from ilora_export.model.sasrec import SASRec
    from ilora_export.model.spec import AdapterSpec

    info = read_checkpoint(path)
    cfg = info.config
    base_dir = _resolve_base(info, base_model)
    llm, _ = load_base_model(base_dir, dtype=dtype, device="cpu")
    recorded = cfg["base_model"]
    actual = {"hidden_size": llm.config.hidden_size, "num_hidden_layers": llm.config.num_hidden_layers,
              "vocab_size_before_tokens": llm.get_input_embeddings().weight.shape[0]}
    for key, have in actual.items():
        if recorded[key] != have:
            raise CheckpointError(
                f"{info.path}: trained on a base model with {key}={recorded[key]}, but {base_dir} has {have}",
                "pass the base model the checkpoint was trained on with --base-model")
    fingerprint_ok = base_model_fingerprint(base_dir) == recorded["fingerprint"]

    tokenizer = AutoTokenizer.from_pretrained(info.path / TOKENIZER, local_files_only=True)
    tokenizer.padding_side = "left"
    if {k: tokenizer.convert_tokens_to_ids(k) for k in cfg["tokens"]} != cfg["tokens"]:
        raise CheckpointError(f"{info.path / TOKENIZER}: special-token ids differ from config.json",
                              "the checkpoint is inconsistent; re-save it")
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)

    sasrec = SASRec(**cfg["sasrec"])
    _load_strict(sasrec, read_tensors(info.path / SASREC), info.path / SASREC)
    model = ILoRAModel(llm, tokenizer, sasrec, AdapterSpec.from_dict(cfg["adapter"]))
    adapter = read_tensors(info.path / ADAPTER)
    expected = model.adapter_state_dict()
    _check_shapes(expected, adapter, info.path / ADAPTER)
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(adapter[k])
    model.load_added_token_rows(read_tensors(info.path / ADDED_TOKENS))
    model.to(device=device).eval()

    catalogue = read_catalogue(info.path / CATALOGUE)
    templates = read_templates(info.path / PROMPTS, cfg["prompts"]["source"])
    return LoadedCheckpoint(model, catalogue, templates, info, base_dir, fingerprint_ok)


def _check_shapes(expected: dict, found: dict, where: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: adapter keys do not match the model ({len(missing)} missing, e.g. "
            f"{missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})",
            "the adapter was trained for another base model or target_modules list")
    for k, t in expected.items():
        if tuple(found[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(found[k].shape)}, the base model needs {tuple(t.shape)}",
                "the adapter shapes do not match this base model; pass the base model it was trained on")


def _load_strict(module: torch.nn.Module, sd: dict, where: Path) -> None:
    _check_shapes(module.state_dict(), sd, where)
    module.load_state_dict(sd, strict=True)
