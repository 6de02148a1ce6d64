"""Restricted loading of torch pickles (``torch.save`` zip archives, legacy torch files, plain pickles).

``safe_load(path, allowed)`` unpickles with its own unpickler (pure-python, BUILD restricted): every global the
pickle names (``module.name``) is looked up in ``allowed`` and nothing else is ever imported or
called. A name outside the allowlist raises :class:`UnsafePickleError` naming it and the file.

Tensors are rebuilt from the raw storage bytes by code in this module (never by torch's own
unpickling). Classes of whole pickled objects (``torch.save(model)``) map to *stand-ins*: inert
classes that only record the pickled ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``,
hyperparameters) and run no code; :func:`module_state_dict` turns such a record into a state dict.

The unpickler, the stand-ins and the numpy helpers live in :mod:`ilora_export.unpickle` (torch-free);
this module adds what torch files need.
"""

from __future__ import annotations

import argparse
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ilora_export.errors import CheckpointError, UnsafePickleError
from ilora_export.unpickle import (
    PickledDict,
    PickledObject,
    RestrictedUnpickler,
    codecs_encode,
    numpy_dtype,
    numpy_scalar,
    set_dict_state,
    set_dtype_state,
    stand_in,
    stand_ins,
)

__all__ = [
    "DEFAULT_ALLOWED",
    "TORCH_NN_ALLOWED",
    "PickledDict",
    "PickledObject",
    "module_state_dict",
    "safe_load",
    "stand_in",
    "stand_ins",
]

# The first object of a legacy (pre zip) torch.save file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# ------------------------------------------------------------------ safe replacements of globals


class _StorageType:
    """What a storage class name (``torch.FloatStorage``) means to us: a dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_STORAGE_TYPES = {
    "torch.UntypedStorage": torch.uint8,
    "torch.DoubleStorage": torch.float64,
    "torch.FloatStorage": torch.float32,
    "torch.HalfStorage": torch.float16,
    "torch.BFloat16Storage": torch.bfloat16,
    "torch.LongStorage": torch.int64,
    "torch.IntStorage": torch.int32,
    "torch.ShortStorage": torch.int16,
    "torch.CharStorage": torch.int8,
    "torch.ByteStorage": torch.uint8,
    "torch.BoolStorage": torch.bool,
}


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` over a flat tensor standing for the storage."""
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise UnsafePickleError("tensor record does not point at a storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise UnsafePickleError(f"malformed tensor record: size {size}, stride {stride}")
    if all(s > 0 for s in size):
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= storage.numel():
            raise UnsafePickleError(f"tensor record of size {size} reads past its storage")
    out = storage.as_strided(size, stride, offset)
    if requires_grad and out.is_floating_point():
        out.requires_grad_(True)
    return out


def _rebuild_parameter(data, requires_grad, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("parameter record does not hold a tensor")
    return torch.nn.Parameter(data.detach(), requires_grad=bool(requires_grad) and data.is_floating_point())


def _device(*args):
    if not all(isinstance(a, (str, int)) for a in args):
        raise UnsafePickleError("malformed torch.device record")
    return torch.device(*args)


#: Tensor machinery, containers and numpy scalars: enough for state dicts and Lightning ``.ckpt``
#: files whose hyperparameters are plain values (``argparse.Namespace`` or ``AttributeDict``).
DEFAULT_ALLOWED: dict[str, object] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.Size": torch.Size,
    "torch.device": _device,
    "numpy.core.multiarray.scalar": numpy_scalar,
    "numpy._core.multiarray.scalar": numpy_scalar,
    "numpy.dtype": numpy_dtype,
    "_codecs.encode": codecs_encode,
    "argparse.Namespace": argparse.Namespace,
    **{name: _StorageType(dtype) for name, dtype in _STORAGE_TYPES.items()},
    **stand_ins(
        "lightning_fabric.utilities.data.AttributeDict",
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "lightning.fabric.utilities.data.AttributeDict",
        "lightning.pytorch.utilities.parsing.AttributeDict",
        mapping=True,
    ),
}

#: Stand-ins for the torch.nn layers a pickled whole module may contain.
TORCH_NN_ALLOWED: dict[str, object] = stand_ins(
    *(
        f"torch.nn.modules.{mod}.{cls}"
        for mod, classes in {
            "dropout": ["Dropout"],
            "sparse": ["Embedding"],
            "normalization": ["LayerNorm"],
            "linear": ["Linear", "Identity"],
            "conv": ["Conv1d"],
            "activation": ["Softmax", "ReLU", "GELU"],
            "batchnorm": ["BatchNorm1d"],
            "pooling": ["AdaptiveAvgPool1d"],
            "container": ["Sequential", "ModuleList", "ModuleDict"],
        }.items()
        for cls in classes
    )
)


# ------------------------------------------------------------------ the unpickler

_HINT = (
    "The file may be malicious, or it holds an object this loader does not know. "
    "Only load checkpoints from sources you trust; do not bypass the allowlist."
)

#: BUILD on anything else is refused: stand-ins, a state dict's ``_metadata``, ``argparse.Namespace``
#: attributes and a numpy dtype's byte order.
_SETTERS = {OrderedDict: set_dict_state, argparse.Namespace: set_dict_state, np.dtype: set_dtype_state}


def _unpickler(file, allowed: Mapping[str, object], source: str, storages=None) -> RestrictedUnpickler:
    """``storages(pid) -> flat tensor`` resolves ``("storage", ...)`` persistent ids; None for plain pickles."""

    def persistent_load(pid: Any) -> object:
        if storages is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError(f"{source}: unexpected persistent id {pid!r}")
        return storages(pid)

    return RestrictedUnpickler(
        file, allowed=allowed, source=source, setters=_SETTERS, persistent_load=persistent_load, hint=_HINT
    )


def _storage_dtype(storage_type: object, source: str) -> torch.dtype:
    if not isinstance(storage_type, _StorageType):
        raise UnsafePickleError(f"{source}: storage record names no known storage type")
    return storage_type.dtype


def _from_bytes(data: bytes | bytearray, dtype: torch.dtype) -> torch.Tensor:
    if not data:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype)


def _load_zip(path: Path, allowed: Mapping[str, object], source: str) -> object:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise CheckpointError(f"{source}: not a torch.save archive (no single data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).strip() not in (b"little", b""):
            raise CheckpointError(f"{source}: big-endian torch archives are not supported")
        cache: dict[str, torch.Tensor] = {}

        def storage(pid: tuple) -> torch.Tensor:
            if len(pid) != 5:
                raise UnsafePickleError(f"{source}: malformed storage record {pid!r}")
            _, storage_type, key, _location, _numel = pid
            dtype = _storage_dtype(storage_type, source)
            key = str(key)
            if key not in cache:
                try:
                    raw = zf.read(f"{prefix}data/{key}")
                except KeyError:
                    raise CheckpointError(f"{source}: storage data/{key} is missing") from None
                cache[key] = _from_bytes(raw, dtype)
            elif cache[key].dtype != dtype:
                cache[key] = cache[key].view(torch.uint8).view(dtype)
            return cache[key]

        with zf.open(pkl[0]) as f:
            return _unpickler(io.BytesIO(f.read()), allowed, source, storage).load()


def _load_stream(path: Path, allowed: Mapping[str, object], source: str) -> object:
    """A plain pickle, or a legacy torch file: magic, protocol, sys info, object, keys, raw data."""
    with open(path, "rb") as f:
        first = _unpickler(f, allowed, source).load()
        if first != _LEGACY_MAGIC:
            return first
        _unpickler(f, allowed, source).load()  # protocol version
        _unpickler(f, allowed, source).load()  # sys info
        pending: dict[str, torch.Tensor] = {}

        def storage(pid: tuple) -> torch.Tensor:
            if len(pid) != 6:
                raise UnsafePickleError(f"{source}: malformed storage record {pid!r}")
            _, storage_type, key, _location, numel, view = pid
            if view is not None:
                raise CheckpointError(f"{source}: legacy storage views are not supported")
            key = str(key)
            if key not in pending:
                pending[key] = torch.zeros(int(numel), dtype=_storage_dtype(storage_type, source))
            return pending[key]

        obj = _unpickler(f, allowed, source, storage).load()
        keys = _unpickler(f, allowed, source).load()
        for key in keys:
            buf = pending.get(str(key))
            if buf is None:
                raise CheckpointError(f"{source}: stray storage {key!r}")
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * buf.element_size()
            raw = f.read(nbytes)
            if numel != buf.numel() or len(raw) != nbytes:
                raise CheckpointError(f"{source}: storage {key!r} is truncated")
            buf.copy_(_from_bytes(raw, buf.dtype))
        return obj


def safe_load(path: str | Path, allowed: Mapping[str, object] | None = None) -> object:
    """Unpickle ``path`` allowing only the globals in ``allowed`` (default :data:`DEFAULT_ALLOWED`).

    ``allowed`` maps ``"module.name"`` (as the pickle spells it, python 2 names normalised) to the
    object to use instead: a stand-in class, a safe function, or a plain type. Tensors come back
    on the CPU. Raises :class:`UnsafePickleError` for any other global and
    :class:`CheckpointError` for unreadable files.
    """
    path = Path(path)
    source = str(path)
    allowed = DEFAULT_ALLOWED if allowed is None else allowed
    if not path.is_file():
        raise CheckpointError(f"{source}: no such file")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, allowed, source)
        return _load_stream(path, allowed, source)
    except (UnsafePickleError, CheckpointError):
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        struct.error,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        RuntimeError,
    ) as exc:
        raise CheckpointError(f"{source}: unreadable pickle ({type(exc).__name__}: {exc})") from exc


def module_state_dict(obj: PickledObject, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    """The state dict of a pickled ``nn.Module`` record (parameters and persistent buffers)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    state = obj.__dict__
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"pickled module entry {prefix}{name} is not a tensor")
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PickledObject):
            raise CheckpointError(f"pickled submodule {prefix}{name} is not a module record")
        out.update(module_state_dict(child, f"{prefix}{name}."))
    return out
