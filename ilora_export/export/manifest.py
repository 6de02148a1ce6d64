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
from ilora_export.export.contract import (
    GraphContract,
    ModelShape,
    decoder_contract,
    encoder_contract,
)
from ilora_export.fileio import find_hash_problem
from ilora_export.model import tokens as T

MANIFEST = "manifest.json"
FORMAT = "ilora-export/onnx"
FORMAT_VERSION = 1
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
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or manifest.get("format_version") != FORMAT_VERSION):
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
        raise ExportError(f"{problem[0]}: listed in manifest.json but missing", "the export is incomplete; export again")
    if problem:
        raise ExportError(f"{problem[0]}: sha256 does not match manifest.json (truncated or modified)",
                          "the export is corrupt; export again")


# --------------------------------------------------------------------------------------------
# Validation: every key a loader reads, its type, and the graph contracts against the sizes


def _is_int(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_bank_shapes(v) -> bool:  # "lora_A.q_proj" -> [L, in, r], "lora_B.q_proj" -> [L, r, out]
    return isinstance(v, dict) and bool(v) and all(
        isinstance(k, str) and k.split(".", 1)[0] in ("lora_A", "lora_B") and "." in k
        and isinstance(s, list) and len(s) == 3 and all(_is_int(n, 1) for n in s) for k, s in v.items())


def _is_files(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(h, str) and len(h) == 64 for k, h in v.items())


_OBJECT = (lambda v: isinstance(v, dict), "an object")
_POSITIVE = (lambda v: _is_int(v, 1), "a positive integer")
_TOKEN_ID = (lambda v: _is_int(v, 0), "a token id")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
_STR = (lambda v: isinstance(v, str), "a string")
_NUMBER = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")

#: dotted key -> (test, what it must be), parents before their keys; the keys the loaders read
_REQUIRED = (
    ("dtype", (lambda v: v in ("float32", "float16"), "'float32' or 'float16'")),
    ("bake_experts", _BOOL),
    ("model", _OBJECT),
    *((f"model.{k}", _POSITIVE) for k in (*(f for f in ModelShape.__dataclass_fields__ if f != "bank_shapes"),
                                          "item_num", "state_size")),
    ("model.bank_shapes", (_is_bank_shapes, "an object of lora_A.* / lora_B.* -> [layers, rows, columns]")),
    ("adapter", _OBJECT), ("adapter.num_experts", _POSITIVE), ("adapter.r", _POSITIVE),
    ("tokens", _OBJECT), *((f"tokens.{name}", _TOKEN_ID) for name in (T.PAD, *T.PLACEHOLDERS)),
    ("eos_token_ids", (lambda v: isinstance(v, list) and all(_is_int(i, 0) for i in v), "a list of token ids")),
    ("prompts_source", _STR),
    ("graphs", _OBJECT), ("graphs.encoder", _OBJECT), ("graphs.decoder", _OBJECT),
    ("files", (_is_files, "an object of file -> sha256")),
    ("versions", _OBJECT),
    ("source", _OBJECT), ("source.checkpoint", _STR), ("source.checkpoint_sha256", _STR),
    ("source.base_model", _OBJECT), ("source.base_model.fingerprint", _STR),
    ("source.base_model.hidden_size", _POSITIVE), ("source.base_model.num_hidden_layers", _POSITIVE),
)
_OPTIONAL = (("adapters", _BOOL), ("quantization", _OBJECT))
_OPTIONAL_PARTS = {"quantization": (("bits", _POSITIVE),)}  # required once the optional key is there
_TENSOR = (("name", _STR), ("dtype", (lambda v: v in ("float32", "float16", "int64"), "float32, float16 or int64")),
           ("axes", (lambda v: isinstance(v, list) and all(_is_int(a, 1) or isinstance(a, str) for a in v),
                     "a list of sizes and axis names")))


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lookup(manifest: dict, key: str):
    """(found, value) at the dotted ``key``."""
    node = manifest
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_value(file: Path, key: str, value, rule) -> None:
    test, what = rule
    if not test(value):
        raise ExportError(f"{file}: key '{key}' is {_show(value)}, expected {what}", _EDITED_HINT)


def _check_keys(manifest: dict, file: Path) -> None:
    required = list(_REQUIRED)
    for key, rule in _OPTIONAL:  # absent or null: not used
        if manifest.get(key) is not None:
            required += [(key, rule), *((f"{key}.{sub}", r) for sub, r in _OPTIONAL_PARTS.get(key, ()))]
    for key, rule in required:
        found, value = _lookup(manifest, key)
        if not found:
            raise ExportError(f"{file}: key '{key}' is missing", _EDITED_HINT)
        _check_value(file, key, value, rule)
    for graph in ("encoder", "decoder"):
        _check_graph(manifest["graphs"][graph], f"graphs.{graph}", file)


def _check_graph(graph: dict, key: str, file: Path) -> None:
    """The contract of one graph (``graphs.encoder`` / ``graphs.decoder``): file, tensors, tolerance."""
    for sub, rule in (("file", _STR), ("inputs", (lambda v: isinstance(v, list), "a list of tensors")),
                      ("outputs", (lambda v: isinstance(v, list), "a list of tensors"))):
        if sub not in graph:
            raise ExportError(f"{file}: key '{key}.{sub}' is missing", _EDITED_HINT)
        _check_value(file, f"{key}.{sub}", graph[sub], rule)
    for kind in ("inputs", "outputs"):
        for i, tensor in enumerate(graph[kind]):
            where = f"{key}.{kind}[{i}]"
            _check_value(file, where, tensor, _OBJECT)
            for sub, rule in _TENSOR:
                if sub not in tensor:
                    raise ExportError(f"{file}: key '{where}.{sub}' is missing", _EDITED_HINT)
                _check_value(file, f"{where}.{sub}", tensor[sub], rule)
    tolerance = graph.get("tolerance", {})
    _check_value(file, f"{key}.tolerance", tolerance, _OBJECT)
    for name, value in tolerance.items():
        _check_value(file, f"{key}.tolerance.{name}", value, _NUMBER)


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


def _tensors(contract: GraphContract) -> tuple:
    return contract.inputs, contract.outputs


def _check_consistency(m: dict, file: Path) -> None:
    """The sizes, dtype and bank mode agree with each other and with both graph contracts."""
    shape = ModelShape.from_dict(m["model"])
    dtype, bake = m["dtype"], m["bake_experts"]
    if m["adapter"]["num_experts"] != shape.num_experts:
        raise ExportError(f"{file}: key 'adapter.num_experts' is {m['adapter']['num_experts']}, 'model.num_experts' "
                          f"is {shape.num_experts}", _EDITED_HINT)
    ranks = {s[2] if k.startswith("lora_A") else s[1] for k, s in shape.bank_shapes.items()}
    if ranks != {m["adapter"]["r"]}:
        raise ExportError(f"{file}: key 'adapter.r' is {m['adapter']['r']}, the expert bank in 'model.bank_shapes' "
                          f"has rank {', '.join(map(str, sorted(ranks)))}", _EDITED_HINT)
    encoder, decoder = (GraphContract.from_dict(m["graphs"][g]) for g in ("encoder", "decoder"))
    if _tensors(encoder) != _tensors(encoder_contract(shape)):
        raise ExportError(f"{file}: key 'graphs.encoder' does not match 'model' "
                          f"({_difference(encoder, encoder_contract(shape))})", _EDITED_HINT)
    want = decoder_contract(shape, dtype, bake_experts=bake)
    if _tensors(decoder) == _tensors(want):
        return
    other = "float16" if dtype == "float32" else "float32"
    if _tensors(decoder) == _tensors(decoder_contract(shape, other, bake_experts=bake)):
        raise ExportError(f"{file}: key 'dtype' is {dtype!r}, but 'graphs.decoder' declares {other} inputs_embeds",
                          _EDITED_HINT)
    if _tensors(decoder) == _tensors(decoder_contract(shape, dtype, bake_experts=not bake)):
        declared = "no expert-bank inputs" if bake is False else "expert-bank inputs"
        raise ExportError(f"{file}: key 'bake_experts' is {bake!r}, but 'graphs.decoder' declares {declared}",
                          _EDITED_HINT)
    raise ExportError(f"{file}: key 'graphs.decoder' does not match 'model', 'dtype' and 'bake_experts' "
                      f"({_difference(decoder, want)})", _EDITED_HINT)


def _check_listed_files(m: dict, file: Path) -> None:
    """Every file a loader opens is listed in ``files`` (so its sha256 is checked)."""
    files = m["files"]
    needed = [m["graphs"]["encoder"]["file"], m["graphs"]["decoder"]["file"], EMBEDDINGS, CATALOGUE, PROMPTS,
              *([] if m["bake_experts"] else [BANK])]
    for name in needed:
        if name not in files:
            raise ExportError(f"{file}: key 'files' lists no {name}", _EDITED_HINT)
    if not any(k.startswith(TOKENIZER + "/") for k in files):
        raise ExportError(f"{file}: key 'files' lists no {TOKENIZER}/ file", _EDITED_HINT)


def check_manifest(manifest: dict, file: Path) -> None:
    """ExportError naming the first key the loaders read that is missing, of the wrong type, or
    inconsistent with the others (a manifest.json edited by hand; it is the one file not hashed)."""
    _check_keys(manifest, file)
    _check_consistency(manifest, file)
    _check_listed_files(manifest, file)


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
        if key in meta and meta[key].strip() != str(want):
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
    raise ExportError(f"{file}: {key} holds {count} {what}, first at {first} ({float(stored[tuple(first)])})",
                      "the expert bank is damaged or comes from a diverged training run; use a bank exported "
                      "from a checkpoint that evaluates correctly")
