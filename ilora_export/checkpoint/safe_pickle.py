"""Restricted loading of torch pickles (``torch.save`` zip archives, legacy torch files, plain pickles).

``safe_load(path, allowed)`` unpickles with its own unpickler (pure-python, BUILD restricted): every global the
pickle names (``module.name``) is looked up in ``allowed`` and nothing else is ever imported or
called. A name outside the allowlist raises :class:`UnsafePickleError` naming it and the file.

Tensors are rebuilt from the raw storage bytes by code in this module (never by torch's own
unpickling). Classes of whole pickled objects (``torch.save(model)``) map to *stand-ins*: inert
classes that only record the pickled ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``,
hyperparameters) and run no code; :func:`module_state_dict` turns such a record into a state dict.
"""

from __future__ import annotations

import _compat_pickle
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

__all__ = [
    "DEFAULT_ALLOWED",
    "PickledDict",
    "PickledObject",
    "TORCH_NN_ALLOWED",
    "module_state_dict",
    "safe_load",
    "stand_in",
    "stand_ins",
]

# The first object of a legacy (pre zip) torch.save file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class PickledObject:
    """Inert record of a pickled object whose class we refuse to import.

    Creating one runs no code of the pickled class: the unpickler only stores the constructor
    arguments (if any) and the pickled state. ``qualname`` is the ``module.name`` the pickle used.
    """

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_pickle_args"] = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        for part in (state, slots):
            if part is None:
                continue
            if not isinstance(part, dict):
                raise UnsafePickleError(f"pickled state of {self.qualname} is not a dict")
            self.__dict__.update(part)

    def __repr__(self) -> str:
        return f"<pickled {self.qualname}>"


class PickledDict(dict):
    """Inert stand-in for a pickled ``dict`` subclass (e.g. Lightning's ``AttributeDict``)."""

    qualname = "?"

    def __repr__(self) -> str:
        return f"<pickled {self.qualname} {dict.__repr__(self)}>"


def stand_in(qualname: str, *, mapping: bool = False) -> type:
    """A fresh inert class standing in for the pickled class ``qualname``.

    ``mapping=True`` gives a ``dict`` subclass, for pickled dict subclasses (their items are
    pickled as dict items, which a plain record could not take).
    """
    name = qualname.rsplit(".", 1)[-1]
    base = PickledDict if mapping else PickledObject
    return type(name, (base,), {"qualname": qualname, "__module__": __name__})


def stand_ins(*qualnames: str, mapping: bool = False) -> dict[str, type]:
    """``{qualname: stand_in(qualname)}`` for an allowlist."""
    return {q: stand_in(q, mapping=mapping) for q in qualnames}


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


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
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


def _numpy_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy dtype {spec!r} is not a plain type code")
    dtype = np.dtype(spec, bool(align), bool(copy))
    if dtype.hasobject:
        raise UnsafePickleError("numpy object dtypes are refused")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar record is not a plain number")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("only latin1-encoded byte strings may be rebuilt")
    return text.encode("latin1")


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
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.dtype": _numpy_dtype,
    "_codecs.encode": _codecs_encode,
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


def _load_build(self: _RestrictedUnpickler) -> None:
    """BUILD (set the state of the object on the stack) only on objects meant to have state."""
    state = self.stack.pop()
    inst = self.stack[-1]
    if isinstance(inst, PickledObject):
        inst.__setstate__(state)
    elif isinstance(inst, PickledDict) or type(inst) in (OrderedDict, argparse.Namespace):
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self._source}: pickled state of {type(inst).__name__} is not a dict")
        inst.__dict__.update(state)  # e.g. a state dict's ``_metadata``
    elif isinstance(inst, np.dtype) and isinstance(state, tuple):
        inst.__setstate__(state)
    else:
        raise UnsafePickleError(f"{self._source}: refusing to set the state of {type(inst).__name__!r}")


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-python unpickler: BUILD can be overridden
    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(self, file, *, allowed: Mapping[str, object], source: str, storages=None):
        super().__init__(file, encoding="utf-8")
        self._allowed = allowed
        self._source = source
        self._storages = storages  # callable(pid) -> flat tensor, or None for plain pickles

    def find_class(self, module: str, name: str) -> object:
        if self.proto < 3:  # python 2 names (``__builtin__.set``)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        try:
            return self._allowed[qualname]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global {qualname!r} (not in the allowlist)",
                hint="The file may be malicious, or it holds an object this loader does not know. "
                "Only load checkpoints from sources you trust; do not bypass the allowlist.",
            ) from None

    def persistent_load(self, pid: Any) -> object:
        if self._storages is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError(f"{self._source}: unexpected persistent id {pid!r}")
        return self._storages(pid)


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
            return _RestrictedUnpickler(
                io.BytesIO(f.read()), allowed=allowed, source=source, storages=storage
            ).load()


def _load_stream(path: Path, allowed: Mapping[str, object], source: str) -> object:
    """A plain pickle, or a legacy torch file: magic, protocol, sys info, object, keys, raw data."""
    with open(path, "rb") as f:
        first = _RestrictedUnpickler(f, allowed=allowed, source=source).load()
        if first != _LEGACY_MAGIC:
            return first
        _RestrictedUnpickler(f, allowed=allowed, source=source).load()  # protocol version
        _RestrictedUnpickler(f, allowed=allowed, source=source).load()  # sys info
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

        obj = _RestrictedUnpickler(f, allowed=allowed, source=source, storages=storage).load()
        keys = _RestrictedUnpickler(f, allowed=allowed, source=source).load()
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
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, ValueError,
            TypeError, IndexError, KeyError, AttributeError, RuntimeError) as exc:
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
