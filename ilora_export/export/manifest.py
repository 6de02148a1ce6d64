"""The export directory and its ``manifest.json``; reading one back, verified.

::

    export/
      manifest.json            contracts of both graphs, sizes, K, r, scaling, token ids, opset, versions,
                               source checkpoint hash, validation results, sha256 of every other file
      encoder.onnx             SASRec + gate + projector (fp32)
      decoder.onnx(.data)      LLM + MoE-LoRA + KV cache; weights in the external-data file
      bank.safetensors         the expert bank, one [L, ...] tensor per projection (absent when baked)
      embeddings.safetensors   the token-embedding matrix [V, H] (the lookup runs on the host)
      tokenizer/, catalogue.json, prompts.txt   copied from the checkpoint

Torch-free: reading a manifest needs only the standard library, numpy and safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ilora_export.errors import ExportError
from ilora_export.export.contract import GraphContract, ModelShape
from ilora_export.fileio import find_hash_problem

MANIFEST = "manifest.json"
FORMAT = "ilora-export/onnx"
FORMAT_VERSION = 1
BANK = "bank.safetensors"
EMBEDDINGS = "embeddings.safetensors"
TOKENIZER = "tokenizer"
CATALOGUE = "catalogue.json"
PROMPTS = "prompts.txt"

_HINT = "point at a folder written by `ilora-export onnx CHECKPOINT -o FOLDER`"


@dataclass
class ExportInfo:
    """A verified export directory: manifest read, every listed file present with its recorded hash."""

    path: Path
    manifest: dict

    @property
    def encoder(self) -> GraphContract:
        return GraphContract.from_dict(self.manifest["graphs"]["encoder"])

    @property
    def decoder(self) -> GraphContract:
        return GraphContract.from_dict(self.manifest["graphs"]["decoder"])

    @property
    def shape(self) -> ModelShape:
        return ModelShape.from_dict(self.manifest["model"])

    @property
    def tolerance(self) -> dict[str, float]:
        """Absolute tolerance per output name against PyTorch fp32, from both contracts."""
        return self.encoder.tolerance | self.decoder.tolerance

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def bake_experts(self) -> bool:
        return self.manifest["bake_experts"]

    @property
    def quantization(self) -> dict | None:
        """How the decoder's weights were quantized (``ilora-export quantize``), None for float weights."""
        return self.manifest.get("quantization")


def write_manifest(path, manifest: dict) -> None:
    """Write ``manifest`` as JSON at ``path``, atomically (sorted keys, so diffs stay readable)."""
    from ilora_export.fileio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(path, *, verify_files: bool = True) -> ExportInfo:
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: export directory not found", _HINT)
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{file}: missing; {path} is not a complete export", _HINT) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{file}: unreadable ({err})", _HINT) from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{file}: not an {FORMAT} v{FORMAT_VERSION} manifest", _HINT)
    problem = find_hash_problem(path, manifest.get("files", {})) if verify_files else None
    if problem and problem[1] == "missing":
        raise ExportError(f"{problem[0]}: listed in manifest.json but missing", "the export is incomplete; export again")
    if problem:
        raise ExportError(f"{problem[0]}: sha256 does not match manifest.json (truncated or modified)",
                          "the export is corrupt; export again")
    return ExportInfo(path, manifest)


def bank_metadata(shape: ModelShape, r: int) -> dict[str, str]:
    return {"num_experts": str(shape.num_experts), "r": str(r), "num_layers": str(shape.num_layers)}


def read_bank(file, info: ExportInfo) -> dict[str, np.ndarray]:
    """An expert bank file, checked against the export's rank, K, layer count and tensor shapes."""
    from safetensors import SafetensorError, safe_open

    file = Path(file)
    adapter = info.manifest["adapter"]
    hint = "use a bank exported from a checkpoint with the same base model, rank, experts and projections"
    try:
        with safe_open(str(file), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{file}: unreadable expert bank ({err})", hint) from None
    for key, want in (("num_experts", adapter["num_experts"]), ("r", adapter["r"]),
                      ("num_layers", info.shape.num_layers)):
        if key in meta and int(meta[key]) != want:
            raise ExportError(f"{file}: expert bank has {key}={meta[key]}, the export needs {want}", hint)
    expected = info.shape.bank_shapes
    if set(tensors) != set(expected):
        raise ExportError(f"{file}: expert bank holds {sorted(tensors)[:4]}..., the export needs "
                          f"{sorted(expected)[:4]}...", hint)
    dtype = np.dtype(info.dtype)
    for key, want in expected.items():
        got = tensors[key]
        if list(got.shape) != list(want):
            what = "layer count" if got.shape[0] != want[0] else "rank"
            raise ExportError(f"{file}: {key} has shape {list(got.shape)}, the export needs {list(want)} "
                              f"(wrong {what})", hint)
        if got.dtype != dtype:
            tensors[key] = got.astype(dtype)
    return tensors
