"""Validate and load a local Hugging Face causal-LM folder (the iLoRA base LLM)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ilora_export.errors import BaseModelError, IloraError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
_FOLDER_HINT = "pass a local Hugging Face model folder (config.json, weights, tokenizer), or 'default'"


def _read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise BaseModelError(f"{path} has no config.json: not a Hugging Face model folder", hint=_FOLDER_HINT)
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BaseModelError(
            f"{cfg_file} cannot be read: {err}", hint="check the file's permissions and encoding"
        ) from None
    except ValueError as err:
        raise BaseModelError(
            f"{cfg_file} is not valid JSON: {err}", hint="restore config.json from the model's original files"
        ) from None
    if not isinstance(cfg, dict):
        raise BaseModelError(
            f"{cfg_file} is not a JSON object", hint="restore config.json from the model's original files"
        )
    return cfg


def _check_causal_lm(path: Path, cfg: dict) -> None:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise BaseModelError(
            f"{path / 'config.json'} declares no model_type", hint="restore config.json from the model's original files"
        )
    if model_type not in CONFIG_MAPPING_NAMES:
        raise BaseModelError(
            f"{path} declares model_type '{model_type}', unknown to transformers {transformers.__version__}",
            hint="use a model architecture this transformers version supports (e.g. a Llama-family LLM)",
        )

    causal_classes = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_classes.update([value] if isinstance(value, str) else value)
    architectures = cfg.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    if architectures and not any(a in causal_classes or str(a).endswith("ForCausalLM") for a in architectures):
        raise BaseModelError(
            f"{path} is not a causal LM: config.json declares {', '.join(map(str, architectures))}",
            hint="iLoRA needs a decoder-only causal language model (e.g. a Llama-family LLM)",
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise BaseModelError(
            f"{path} is not a causal LM: model_type '{model_type}' has no causal-LM model in transformers",
            hint="iLoRA needs a decoder-only causal language model (e.g. a Llama-family LLM)",
        )


def _check_weights(path: Path) -> list[str]:
    for index_name in _WEIGHT_INDEXES:
        index = path / index_name
        if not index.is_file():
            continue
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise BaseModelError(
                f"{index} is not a valid weight index: {err}",
                hint="restore the index file from the model's original files",
            ) from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise BaseModelError(
                f"{path} is missing weight shard {missing[0]} listed in {index_name}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                hint="copy every shard file of the model into the folder",
            )
        return [index_name, *shards]
    found = [name for name in _WEIGHT_FILES if (path / name).is_file()]
    if not found:
        found = sorted(p.name for p in path.glob("*.safetensors"))
    if found:
        return found
    if any(path.glob("*.gguf")):
        raise BaseModelError(
            f"{path} holds only GGUF weights; a safetensors or PyTorch model is needed",
            hint="load it once with transformers (from_pretrained(..., gguf_file=...)) and "
            "save_pretrained it to a new folder",
        )
    raise BaseModelError(
        f"{path} has no model weights (model.safetensors, pytorch_model.bin or a sharded index)",
        hint="copy the model's weight files into the folder",
    )


def _check_tokenizer(path: Path) -> None:
    if any((path / name).is_file() for name in _TOKENIZER_FILES) or any(path.glob("*.tiktoken")):
        return
    raise BaseModelError(
        f"{path} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)",
        hint="save the model's tokenizer into the folder (tokenizer.save_pretrained(folder))",
    )


def check_base_model_dir(path: str | os.PathLike) -> dict:
    """Check that ``path`` is a local causal-LM folder transformers can load; return its config.json.

    Checks: the folder exists; ``config.json`` is readable JSON whose ``model_type`` transformers
    knows and whose ``architectures`` (when given) name a causal LM; weights are present (shards
    listed by an index included); tokenizer files are present. Raises :class:`BaseModelError`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise BaseModelError(f"{path}: base model folder does not exist", hint=_FOLDER_HINT)
    if not path.is_dir():
        raise BaseModelError(
            f"{path} is not a folder", hint="pass the folder that holds config.json, not a file inside it"
        )
    cfg = _read_config(path)
    _check_causal_lm(path, cfg)
    _check_weights(path)
    _check_tokenizer(path)
    return cfg


def load_base_model(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: str = "cpu",
    attn_implementation: str = "eager",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the causal LM and its tokenizer from a local folder (no hub access), in eval mode.

    ``dtype`` defaults to ``torch.float32``; a name such as ``"bfloat16"`` is accepted too.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    check_base_model_dir(path)
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise IloraError(f"unknown dtype '{dtype}'", hint="use float32, bfloat16 or float16")
        dtype = resolved
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise IloraError(
            f"device '{device}' requested but CUDA is not available",
            hint="use --device cpu, or install a CUDA build of PyTorch on a GPU machine",
        )

    from safetensors import SafetensorError

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise BaseModelError(
            f"{path}: the tokenizer cannot be loaded: {_one_line(err)}",
            hint="save the model's tokenizer into the folder (tokenizer.save_pretrained)",
        ) from err
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
        )
    except (OSError, ValueError, SafetensorError) as err:
        raise BaseModelError(
            f"{path}: the model cannot be loaded: {_one_line(err)}",
            hint="check that the weight files are complete and match config.json",
        ) from err
    model.to(device)
    model.eval()
    return model, tokenizer


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."
