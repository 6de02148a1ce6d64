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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ilora_export.artifacts import tokens as T
from ilora_export.artifacts.bank import (
    KEY_FORMS,
    LAYER_AXIS,
    STORED_NDIM,
    file_metadata,
    is_bank_key,
    rank_of,
)
from ilora_export.artifacts.checkpoint import PROJECT_PROMPTS, PROMPT_STYLES
from ilora_export.artifacts.contract import (
    GraphContract,
    ModelShape,
    decoder_contract,
    encoder_contract,
)
from ilora_export.artifacts.kinds import EXPORT_FORMAT
from ilora_export.errors import ExportError
from ilora_export.fileio import find_hash_problem
from ilora_export.schema import build, describe, opt

MANIFEST = "manifest.json"
FORMAT = EXPORT_FORMAT
FORMAT_VERSION = 2  # 2: the decoder reads and writes a preallocated KV cache (cache_position, row_start)
BANK = "bank.safetensors"
EMBEDDINGS = "embeddings.safetensors"
TOKENIZER = "tokenizer"
CATALOGUE = "catalogue.json"
PROMPTS = "prompts.txt"

_HINT = "point at a folder written by `ilora-export onnx CHECKPOINT -o FOLDER`"
_EDITED_HINT = "manifest.json was edited or damaged; export again: ilora-export onnx CHECKPOINT -o FOLDER"


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
    """The export at ``path``: manifest.json read and validated (:func:`check_manifest`), and with
    ``verify_files`` every listed file checked against its sha256."""
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
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("format_version") != FORMAT_VERSION
    ):
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if isinstance(manifest, dict) and manifest.get("format") == FORMAT and isinstance(version, int):
            raise ExportError(
                f"{file}: an {FORMAT} v{version} export; this version reads v{FORMAT_VERSION}"
                + (" (the decoder's KV-cache interface changed)" if version < FORMAT_VERSION else ""),
                "export again from the checkpoint: ilora-export onnx CHECKPOINT -o FOLDER",
            )
        raise ExportError(f"{file}: not an {FORMAT} v{FORMAT_VERSION} manifest", _HINT)
    check_manifest(manifest, file)
    info = ExportInfo(path, manifest)
    if verify_files:
        verify_export_files(info)
    return info


def verify_export_files(info: ExportInfo, names=None) -> None:
    """ExportError naming the first of ``names`` (default: every file manifest.json lists) that is
    missing or whose sha256 differs from the recorded one."""
    files = info.manifest["files"]
    problem = find_hash_problem(info.path, {k: files[k] for k in (files if names is None else names)})
    if problem and problem[1] == "missing":
        raise ExportError(
            f"{problem[0]}: listed in manifest.json but missing", "the export is incomplete; export again"
        )
    if problem:
        raise ExportError(
            f"{problem[0]}: sha256 does not match manifest.json (truncated or modified)",
            "the export is corrupt; export again",
        )


# --------------------------------------------------------------------------------------------
# Validation: every key a loader reads (ilora_export.schema records), then the graph contracts
# against the sizes, dtype and bank mode


_TENSOR_KEYS = (
    ("name", lambda v: isinstance(v, str) and v != "", "a tensor name"),
    ("dtype", lambda v: v in ("float32", "float16", "int64"), "'float32', 'float16' or 'int64'"),
    (
        "axes",
        lambda v: isinstance(v, list) and all(isinstance(a, str) or _is_size(a) for a in v),
        "a list of sizes and axis names",
    ),
)


def _is_size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclass
class _GraphRecord:
    """One graph contract (``contract.GraphContract.to_dict``)."""

    file: str = opt(nonempty=True)
    inputs: list[dict] = opt(nonempty=True)
    outputs: list[dict] = opt(nonempty=True)
    tolerance: dict[str, float] = opt(factory=dict)

    @staticmethod
    def _cross_check(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        for kind in ("inputs", "outputs"):
            for i, tensor in enumerate(v.get(kind, ())):
                for key, ok, what in _TENSOR_KEYS:
                    if key not in tensor:
                        yield f"{kind}[{i}].{key}", "missing required key"
                    elif not ok(tensor[key]):
                        yield f"{kind}[{i}].{key}", f"expected {what}, got {describe(tensor[key])}"


@dataclass
class _GraphsRecord:
    encoder: _GraphRecord = opt()
    decoder: _GraphRecord = opt()


@dataclass
class _ModelRecord:
    """``contract.ModelShape`` plus the SASRec sizes."""

    hidden_size: int = opt(ge=1)
    num_layers: int = opt(ge=1)
    num_kv_heads: int = opt(ge=1)
    head_dim: int = opt(ge=1)
    vocab_size: int = opt(ge=1)
    num_experts: int = opt(ge=1)
    bank_shapes: dict[str, list[int]] = opt(nonempty=True)  # bank key -> stored shape (artifacts.bank)
    item_num: int = opt(ge=1)
    state_size: int = opt(ge=1)

    @staticmethod
    def _cross_check(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        for key, dims in v.get("bank_shapes", {}).items():
            if not is_bank_key(key):
                yield f"bank_shapes[{key!r}]", f"expected a {KEY_FORMS} key"
            elif len(dims) != STORED_NDIM or not all(_is_size(n) for n in dims):
                yield f"bank_shapes[{key!r}]", f"expected [layers, rows, columns], got {dims!r}"


@dataclass
class _AdapterRecord:
    num_experts: int = opt(ge=1)
    r: int = opt(ge=1)


@dataclass
class _BaseModelRecord:
    fingerprint: str = opt(nonempty=True)
    hidden_size: int = opt(ge=1)
    num_hidden_layers: int = opt(ge=1)


@dataclass
class _SourceRecord:
    checkpoint: str = opt(nonempty=True)
    checkpoint_sha256: str = opt(nonempty=True)
    base_model: _BaseModelRecord = opt()


@dataclass
class _QuantizationRecord:
    bits: int = opt(ge=1)


@dataclass
class _ManifestRecord:
    """manifest.json: the keys the loaders read (others are kept, not read)."""

    dtype: str = opt(choices=("float32", "float16"))
    bake_experts: bool = opt()
    model: _ModelRecord = opt()
    adapter: _AdapterRecord = opt()
    graphs: _GraphsRecord = opt()
    tokens: dict[str, int] = opt(nonempty=True)
    eos_token_ids: list[int] = opt()
    prompts_source: str = opt()
    files: dict[str, str] = opt(nonempty=True)
    versions: dict = opt()
    source: _SourceRecord = opt()
    adapters: bool = opt(True)
    prompts_style: str = opt(PROJECT_PROMPTS, choices=PROMPT_STYLES)  # the checkpoint's; absent in older exports
    quantization: _QuantizationRecord | None = opt(None)

    @staticmethod
    def _cross_check(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if "tokens" in v:  # the generator looks these up
            yield from (("tokens", f"has no {name}") for name in (T.PAD, *T.PLACEHOLDERS) if name not in v["tokens"])


_NOT_READ = "not read by the loaders"


def check_manifest(manifest: dict, file: Path) -> None:
    """ExportError naming every key the loaders read that is missing or of the wrong type, else the
    first inconsistency between the sizes, dtype, bank mode, graph contracts and listed files
    (manifest.json is the one file of an export that no hash covers)."""
    problems: list[str] = []
    build(_ManifestRecord, manifest, "", problems, unknown=lambda *_: _NOT_READ)
    problems = [p for p in problems if not p.endswith(_NOT_READ)]
    if not problems:
        problems = _consistency_problems(manifest)[:1]
    if problems:
        listed = problems[0] if len(problems) == 1 else f"{len(problems)} problems: {'; '.join(problems)}"
        raise ExportError(f"{file}: {listed}", _EDITED_HINT)


def _consistency_problems(m: dict) -> list[str]:
    """Problems between keys that are each well formed, as ``"key: text"``."""
    shape = ModelShape.from_dict(m["model"])
    dtype, bake, adapter = m["dtype"], m["bake_experts"], m["adapter"]
    problems = []
    if adapter["num_experts"] != shape.num_experts:
        problems.append(f"adapter.num_experts: {adapter['num_experts']}, but model.num_experts is {shape.num_experts}")
    ranks = sorted({rank_of(key, dims) for key, dims in shape.bank_shapes.items()})
    if ranks != [adapter["r"]]:
        problems.append(f"adapter.r: {adapter['r']}, but model.bank_shapes holds rank {', '.join(map(str, ranks))}")
    encoder, decoder = (GraphContract.from_dict(m["graphs"][g]) for g in ("encoder", "decoder"))
    if _tensors(encoder) != _tensors(encoder_contract(shape)):
        problems.append(f"graphs.encoder: does not match model ({_difference(encoder, encoder_contract(shape))})")
    want = decoder_contract(shape, dtype, bake_experts=bake)
    other = "float16" if dtype == "float32" else "float32"
    if _tensors(decoder) == _tensors(want):
        pass
    elif _tensors(decoder) == _tensors(decoder_contract(shape, other, bake_experts=bake)):
        problems.append(f"dtype: {dtype!r}, but graphs.decoder declares {other} inputs_embeds")
    elif _tensors(decoder) == _tensors(decoder_contract(shape, dtype, bake_experts=not bake)):
        problems.append(
            f"bake_experts: {str(bake).lower()}, but graphs.decoder declares "
            f"{'no expert-bank inputs' if not bake else 'expert-bank inputs'}"
        )
    else:
        problems.append(f"graphs.decoder: does not match model, dtype and bake_experts ({_difference(decoder, want)})")
    needed = [encoder.file, decoder.file, EMBEDDINGS, CATALOGUE, PROMPTS, *([] if bake else [BANK])]
    problems += [f"files: lists no {name}" for name in needed if name not in m["files"]]
    if not any(k.startswith(TOKENIZER + "/") for k in m["files"]):
        problems.append(f"files: lists no {TOKENIZER}/ file")
    return problems


def _tensors(contract: GraphContract) -> tuple:
    return contract.inputs, contract.outputs


def _difference(have: GraphContract, want: GraphContract) -> str:
    """The first tensor where two contracts differ, in words."""
    for kind in ("inputs", "outputs"):
        got, expected = getattr(have, kind), getattr(want, kind)
        for a, b in zip(got, expected):
            if a != b:
                return f"{kind[:-1]} {a.name} {a.dtype} {list(a.axes)}, expected {b.name} {b.dtype} {list(b.axes)}"
        if len(got) != len(expected):
            return f"{len(got)} {kind}, expected {len(expected)}"
    return "same tensors"


def bank_metadata(shape: ModelShape, r: int) -> dict[str, str]:
    """The metadata of the export's ``bank.safetensors``."""
    return file_metadata(shape.num_experts, r, shape.num_layers)


def read_bank(file, info: ExportInfo) -> dict[str, np.ndarray]:
    """An expert bank file by key (``artifacts.bank``), checked against the export's rank, K, layer count
    and tensor shapes."""
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
    for key, want in file_metadata(adapter["num_experts"], adapter["r"], info.shape.num_layers).items():
        if key in meta and meta[key].strip() != want:
            raise ExportError(f"{file}: expert bank has {key}={meta[key]}, the export needs {want}", hint)
    expected = info.shape.bank_shapes
    if set(tensors) != set(expected):
        raise ExportError(
            f"{file}: expert bank holds {sorted(tensors)[:4]}..., the export needs {sorted(expected)[:4]}...", hint
        )
    dtype = np.dtype(info.dtype)
    for key, want in expected.items():
        got = tensors[key]
        if list(got.shape) != list(want):
            what = "layer count" if got.shape[LAYER_AXIS] != want[LAYER_AXIS] else "rank"
            raise ExportError(
                f"{file}: {key} has shape {list(got.shape)}, the export needs {list(want)} (wrong {what})", hint
            )
        _check_finite(file, key, got, got)
        if got.dtype != dtype:
            with np.errstate(over="ignore"):
                tensors[key] = got.astype(dtype)  # [L, ...] in the decoder's dtype
            _check_finite(file, key, tensors[key], got, cast_to=str(dtype))
    return tensors


def _check_finite(file: Path, key: str, values: np.ndarray, stored: np.ndarray, cast_to: str | None = None) -> None:
    """ExportError naming ``key`` when ``values`` holds NaN or Inf: stored so, or (``cast_to``) out of
    that dtype's range once cast. ``stored``: the values as the file holds them."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    count, first = int(bad.sum()), [int(i) for i in np.argwhere(bad)[0]]
    noun = "value" if count == 1 else "values"
    what = f"non-finite {noun} (NaN or Inf)" if cast_to is None else f"{noun} beyond the {cast_to} range"
    raise ExportError(
        f"{file}: {key} holds {count} {what}, first at {first} ({float(stored[tuple(first)])})",
        "the expert bank is damaged or comes from a diverged training run; use a bank exported "
        "from a checkpoint that evaluates correctly",
    )
