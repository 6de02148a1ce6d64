"""Loading a checkpoint directory back into an :class:`ILoRAModel`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ilora_export.artifacts.checkpoint import (
    ADAPTER,
    ADDED_TOKENS,
    CATALOGUE,
    CONFIG,
    PROMPTS,
    SASREC,
    TOKENIZER,
    CheckpointInfo,
    base_model_fingerprint,
    prompts_style,
    read_checkpoint,
)
from ilora_export.checkpoint.format import read_tensors
from ilora_export.data.llara import Catalogue, read_catalogue
from ilora_export.data.prompts import PromptTemplates, read_templates
from ilora_export.errors import CheckpointError


@dataclass
class LoadedCheckpoint:
    """A ready-to-run model plus what it needs to build prompts."""

    model: ILoRAModel  # noqa: F821
    catalogue: Catalogue
    templates: PromptTemplates
    info: CheckpointInfo
    base_model_dir: Path
    fingerprint_ok: bool = True  # False: same shapes, but the base folder's files differ from training


def _resolve_base(info: CheckpointInfo, base_model: str | None) -> Path:
    from ilora_export.base.fetch import resolve_base_model

    recorded = info.config["base_model"]
    if base_model is not None:
        return resolve_base_model(base_model)
    if Path(recorded["path"]).is_dir():
        return Path(recorded["path"])
    return resolve_base_model(recorded["ref"])


def load_checkpoint(
    path, *, base_model: str | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedCheckpoint:
    """Validate and load a checkpoint directory.

    ``base_model`` overrides the recorded base-model location (a local folder, or "default"); it must
    be the same model the checkpoint was trained on (checked by shape and fingerprint).
    """
    from transformers import AutoTokenizer

    from ilora_export.artifacts.spec import AdapterSpec
    from ilora_export.base.loading import load_base_model
    from ilora_export.model.ilora import ILoRAModel
    from ilora_export.model.sasrec import SASRec

    info = read_checkpoint(path)
    cfg = info.config
    base_dir = _resolve_base(info, base_model)
    llm, _ = load_base_model(base_dir, dtype=dtype, device="cpu")
    recorded = cfg["base_model"]
    actual = {
        "hidden_size": llm.config.hidden_size,
        "num_hidden_layers": llm.config.num_hidden_layers,
        "vocab_size_before_tokens": llm.get_input_embeddings().weight.shape[0],
    }
    for key, have in actual.items():
        if recorded[key] != have:
            raise CheckpointError(
                f"{info.path}: trained on a base model with {key}={recorded[key]}, but {base_dir} has {have}",
                "pass the base model the checkpoint was trained on with --base-model",
            )
    fingerprint_ok = base_model_fingerprint(base_dir) == recorded["fingerprint"]

    tokenizer = AutoTokenizer.from_pretrained(info.path / TOKENIZER, local_files_only=True)
    tokenizer.padding_side = "left"
    if {k: tokenizer.convert_tokens_to_ids(k) for k in cfg["tokens"]} != cfg["tokens"]:
        raise CheckpointError(
            f"{info.path / TOKENIZER}: special-token ids differ from config.json",
            "the checkpoint is inconsistent; re-save it",
        )
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)

    sasrec = _build(lambda: SASRec(**cfg["sasrec"]), info.path / CONFIG, "sasrec")
    sasrec_cfg = _described("sasrec", cfg["sasrec"])
    _load_strict(sasrec, read_tensors(info.path / SASREC), info.path / SASREC, f"config.json's {sasrec_cfg}")
    spec = AdapterSpec.from_dict(cfg["adapter"])
    model = _build(lambda: ILoRAModel(llm, tokenizer, sasrec, spec), info.path / CONFIG, "adapter")
    # The expected adapter shapes follow from config.json and the base model; with the recorded base
    # model (same fingerprint), a mismatch can only be config.json contradicting the tensors.
    described, hint = f"config.json's {_described('adapter', cfg['adapter'])} with sasrec hidden={sasrec.hidden}", None
    if not fingerprint_ok:
        described += f" on the base model {base_dir} (not the files it was trained with)"
        hint = "pass the base model the checkpoint was trained on with --base-model, or restore config.json"
    adapter = read_tensors(info.path / ADAPTER)
    expected = model.adapter_state_dict()
    _check_shapes(expected, adapter, info.path / ADAPTER, described, hint)
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(adapter[k])
    rows = read_tensors(info.path / ADDED_TOKENS)
    _check_shapes(
        model.added_token_rows(),
        rows,
        info.path / ADDED_TOKENS,
        f"the base model {base_dir} with the tokens of config.json",
        "pass the base model the checkpoint was trained on with --base-model",
    )
    model.load_added_token_rows(rows)
    model.to(device=device).eval()

    catalogue = read_catalogue(info.path / CATALOGUE)
    templates = read_templates(info.path / PROMPTS, cfg["prompts"]["source"], prompts_style(cfg))
    return LoadedCheckpoint(model, catalogue, templates, info, base_dir, fingerprint_ok)


def _described(section: str, values: dict) -> str:
    """``adapter section (r=8, num_experts=2, ...)``: a config section as messages quote it."""
    shown = ", ".join(f"{k}={v!r}" for k, v in values.items() if k not in ("target_modules", "scaling"))
    return f"{section} section ({shown})"


def _build(make, cfg_path: Path, section: str):
    """``make()``, with a ValueError (settings the model refuses) as a CheckpointError naming the section."""
    try:
        return make()
    except ValueError as err:
        raise CheckpointError(
            f"{cfg_path}: {section}: {err}",
            "config.json was edited or does not fit this base model: restore it, or pass the "
            "base model the checkpoint was trained on with --base-model",
        ) from None


def _check_shapes(expected: dict, found: dict, where: Path, described_by: str, hint: str | None = None) -> None:
    """CheckpointError unless ``found`` has exactly the keys and shapes of ``expected``, which is what
    ``described_by`` (the configuration that produced ``expected``) implies."""
    hint = hint or "config.json does not describe these tensors (edited, or taken from another checkpoint): restore it"
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the tensors do not match {described_by} ({len(missing)} missing, e.g. "
            f"{missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})",
            hint,
        )
    for k, t in expected.items():
        if tuple(found[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(found[k].shape)}, but {described_by} implies {tuple(t.shape)}", hint
            )


def _load_strict(module: torch.nn.Module, sd: dict, where: Path, described_by: str) -> None:
    _check_shapes(module.state_dict(), sd, where, described_by)
    module.load_state_dict(sd, strict=True)
