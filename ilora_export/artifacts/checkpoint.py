"""The checkpoint directory's format: what a fine-tuned iLoRA model is, independent of how it was trained.

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

``config.json`` lists the sha256 of every other file: a truncated or edited file is reported by name.
Torch-free: :func:`read_checkpoint` validates the folder without loading a tensor; writing a checkpoint
and reading its tensors is ``ilora_export.checkpoint.format``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ilora_export.artifacts.kinds import CHECKPOINT, CHECKPOINT_FORMAT, ENGINES, EXPORT, FINETUNE_RUN, folder_kind
from ilora_export.artifacts.spec import AdapterSpec
from ilora_export.errors import CheckpointError
from ilora_export.fileio import find_hash_problem
from ilora_export.schema import build, opt

FORMAT = CHECKPOINT_FORMAT
FORMAT_VERSION = 1
CONFIG = "config.json"
ADAPTER = "adapter.safetensors"
ADDED_TOKENS = "added_tokens.safetensors"
SASREC = "sasrec.safetensors"
TOKENIZER = "tokenizer"
CATALOGUE = "catalogue.json"
PROMPTS = "prompts.txt"

# How a checkpoint's prompts are built and answered (config.json's ``prompts.style``): "project" for the
# project's own checkpoints; "official" for checkpoints imported from the official iLoRA code, whose loader
# strips every template line and whose generation bans EOS at the first step (min_new_tokens=1).
PROJECT_PROMPTS, OFFICIAL_PROMPTS = "project", "official"
PROMPT_STYLES = (PROJECT_PROMPTS, OFFICIAL_PROMPTS)


def base_model_fingerprint(base_dir: Path) -> str:
    """Cheap identity of a base-model folder: its config.json plus the names and sizes of its weights."""
    base_dir = Path(base_dir)
    h = hashlib.sha256((base_dir / "config.json").read_bytes())
    for p in sorted(base_dir.glob("*.safetensors")) + sorted(base_dir.glob("*.bin")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()


@dataclass
class _BaseModelRecord:
    ref: str = opt(nonempty=True)
    path: str = opt(nonempty=True)
    fingerprint: str = opt(nonempty=True)
    model_type: str = opt(nonempty=True)
    hidden_size: int = opt(ge=1)
    num_hidden_layers: int = opt(ge=1)
    vocab_size_before_tokens: int = opt(ge=1)


@dataclass
class _SASRecRecord:  # SASRec's constructor arguments
    item_num: int = opt(ge=1)
    hidden: int = opt(ge=1)
    state_size: int = opt(ge=1)
    num_heads: int = opt(ge=1)
    dropout: float = opt(ge=0, lt=1)


@dataclass
class _CatalogueRecord:
    num_items: int = opt(ge=1)
    pad_id: int = opt(ge=0)


@dataclass
class _PromptsRecord:
    source: str = opt()
    count: int = opt(ge=1)
    style: str = opt(PROJECT_PROMPTS, choices=PROMPT_STYLES)  # absent in checkpoints written before it


@dataclass
class _ConfigRecord:
    """config.json: every key is required (``extra`` may be null); the loaders read these."""

    format: str = opt()
    format_version: int = opt()
    base_model: _BaseModelRecord = opt()
    tokens: dict[str, int] = opt(nonempty=True)
    adapter: AdapterSpec = opt()
    sasrec: _SASRecRecord = opt()
    catalogue: _CatalogueRecord = opt()
    prompts: _PromptsRecord = opt()
    files: dict[str, str] = opt(nonempty=True)
    extra: dict | None = opt()


def prompts_style(config: Mapping) -> str:
    """A validated config.json's ``prompts.style`` ("project" when absent)."""
    return config["prompts"].get("style", PROJECT_PROMPTS)


@dataclass
class CheckpointInfo:
    """A validated checkpoint directory (config complete, files present, hashes match); nothing heavy loaded."""

    path: Path
    config: dict


_HINT = "point at a directory written by `ilora-export finetune` (its ckpt/ folder)"
_CONFIG_HINT = (
    "config.json was edited or damaged: restore it, or run the same `ilora-export finetune` command "
    "again to re-save the checkpoint from its trainer state"
)


def _config_problems(config) -> list[str]:
    """Every problem of a parsed config.json, as ``"dotted.key: problem"``."""
    if not isinstance(config, Mapping):
        return []
    raw = {"extra": None} | dict(config)
    if isinstance(raw.get("adapter"), Mapping):  # scaling = alpha / (r / K) documents the adapter; not read back
        raw["adapter"] = {k: v for k, v in raw["adapter"].items() if k != "scaling"}
    if isinstance(raw.get("prompts"), Mapping):  # checkpoints written before prompts.style are the project's
        raw["prompts"] = {"style": PROJECT_PROMPTS} | dict(raw["prompts"])
    problems: list[str] = []
    build(_ConfigRecord, raw, "", problems, defaults=False)
    return problems


def _other_folder(path: Path) -> CheckpointError | None:
    """The error for a folder that is something else than a checkpoint (an export, engines, a run)."""
    kind = folder_kind(path)
    if kind == EXPORT:
        return CheckpointError(
            f"{path} is an ONNX export, not a checkpoint",
            f"evaluate an export with `ilora-export eval {path} --backend ort`; commands that "
            "read a checkpoint want the fine-tuning output's ckpt/ folder",
        )
    if kind == ENGINES:
        return CheckpointError(
            f"{path} is a TensorRT engines folder, not a checkpoint",
            f"evaluate engines with `ilora-export eval {path} --backend trt`; commands "
            "that read a checkpoint want the fine-tuning output's ckpt/ folder",
        )
    if kind == FINETUNE_RUN or folder_kind(path / "ckpt") == CHECKPOINT:
        return CheckpointError(
            f"{path} is a fine-tuning output folder, not a checkpoint", f"pass its checkpoint: {path / 'ckpt'}"
        )
    return None


def read_checkpoint(path) -> CheckpointInfo:
    """Validate a checkpoint directory: config.json (every key, its type and range) and file hashes."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found", _HINT)
    cfg_path = path / CONFIG
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _other_folder(path) or CheckpointError(
            f"{cfg_path}: missing; {path} is not a complete checkpoint", _HINT
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{cfg_path}: unreadable ({err})", _HINT) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: not an {FORMAT} v{FORMAT_VERSION} config", _HINT)
    problems = _config_problems(config)
    if problems:
        listed = problems[0] if len(problems) == 1 else f"{len(problems)} problems: {'; '.join(problems)}"
        raise CheckpointError(f"{cfg_path}: {listed}", _CONFIG_HINT)
    problem = find_hash_problem(path, config["files"])
    if problem and problem[1] == "missing":
        raise CheckpointError(
            f"{problem[0]}: listed in config.json but missing", "the checkpoint is incomplete; re-save it"
        )
    if problem:
        raise CheckpointError(
            f"{problem[0]}: sha256 does not match config.json (truncated or modified)",
            "the checkpoint is corrupt; re-save it from training",
        )
    for required in (ADAPTER, ADDED_TOKENS, SASREC, CATALOGUE, PROMPTS, f"{TOKENIZER}/"):
        if not any(f == required or f.startswith(required) and required.endswith("/") for f in config["files"]):
            raise CheckpointError(f"{cfg_path}: files lists no {required}", _CONFIG_HINT)
    return CheckpointInfo(path, config)
