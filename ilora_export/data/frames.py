"""pandas DataFrame pickles read without running code from them.

:func:`load_frame_pickle` unpickles with :class:`~ilora_export.unpickle.RestrictedUnpickler` and
:data:`FRAME_ALLOWED`: exactly the globals pandas (1.x to 3.x, protocols 0-5) and numpy write for a frame
of numbers, lists, tuples and strings. Each maps to a checked stand-in for the real pandas, numpy or
pyarrow callable; classes that pickles only create empty (NEWOBJ) map to makers that refuse arguments,
and classes that pickles only pass to another function map to inert tokens. BUILD sets state only on
frames, block managers, string arrays, numpy arrays and dtypes, each after checking the state's form.

Beyond refusing names, the checks keep a crafted file from making pandas, numpy or pyarrow read or
write outside their own memory: blocks must cover the frame's columns exactly once (pandas indexes with
these positions unchecked), dtypes keep their own flags (numpy would take raw bytes as object pointers),
and pyarrow string arrays are fully validated.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas._libs import arrays as _pd_arrays
from pandas._libs.internals import BlockPlacement, _unpickle_block
from pandas.arrays import ArrowStringArray, StringArray
from pandas.core.indexes.base import _new_Index
from pandas.core.internals.blocks import Block
from pandas.core.internals.managers import BlockManager

from ilora_export.errors import UnsafePickleError
from ilora_export.unpickle import (
    NDARRAY,
    RestrictedUnpickler,
    Token,
    codecs_encode,
    numpy_dtype,
    numpy_frombuffer,
    numpy_reconstruct,
    numpy_scalar,
    set_dtype_state,
    set_ndarray_state,
)

__all__ = ["FRAME_ALLOWED", "HINT", "load_frame_pickle"]

HINT = (
    "The file may be malicious, or it holds an object a dataset split does not need. "
    "Only use dataset files from sources you trust; do not bypass the allowlist."
)


# ------------------------------------------------------------------ classes a pickle may name


def _empty_maker(real: type) -> type:
    """A class standing for ``real``: NEWOBJ (and ``copyreg._reconstructor``) get an empty ``real`` for BUILD
    to fill; calling it with arguments is refused."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            raise UnsafePickleError(f"refusing to call {real.__name__} with arguments")
        return object.__new__(real)

    return type(real.__name__, (), {"__new__": __new__, "__module__": __name__, "__qualname__": real.__name__})


_EmptyFrame = _empty_maker(pd.DataFrame)
_EmptyArrowStrings = _empty_maker(ArrowStringArray)

#: Index classes, only ever the first argument of ``_new_Index``.
_INDEX, _RANGE_INDEX = Token("pandas.Index"), Token("pandas.RangeIndex")
_STRING_ARRAY = Token("pandas.arrays.StringArray")
_INDEX_CLASSES = {_INDEX: pd.Index, _RANGE_INDEX: pd.RangeIndex}
_INDEX_KEYS = {"data", "name", "names", "dtype", "start", "stop", "step"}


def _check_placements(placements: Sequence[BlockPlacement], num_columns: int) -> None:
    """Blocks must hold each column position ``0 .. num_columns-1`` exactly once."""
    if sum(len(p) for p in placements) == num_columns:
        held = np.sort(np.concatenate([p.as_array for p in placements])) if placements else np.empty(0, np.intp)
        if np.array_equal(held, np.arange(num_columns)):
            return
    raise UnsafePickleError(
        f"refusing a frame whose blocks do not hold each of its {num_columns} column positions exactly once"
    )


class _BlockManagerMaker:
    """Stands for pandas' ``BlockManager``: ``BlockManager(blocks, axes)`` (pandas >= 2) is built once
    the blocks' column positions are checked; NEWOBJ (pandas 1.x, state set by BUILD) gives an empty
    manager for :func:`_set_manager_state`."""

    def __new__(cls, *args: Any) -> BlockManager:
        if not args:
            return BlockManager.__new__(BlockManager)
        if len(args) != 2 or not isinstance(args[1], list) or len(args[1]) != 2:
            raise UnsafePickleError("malformed block manager record")
        blocks, axes = args
        if not isinstance(blocks, tuple) or not all(isinstance(b, Block) for b in blocks):
            raise UnsafePickleError("block manager record holds something other than blocks")
        if not all(isinstance(axis, pd.Index) for axis in axes):
            raise UnsafePickleError("block manager axes are not indexes")
        _check_placements([b.mgr_locs for b in blocks], len(axes[0]))
        return BlockManager(blocks, axes)


# ------------------------------------------------------------------ functions a pickle may call


def _new_index(cls: Any, d: Any) -> pd.Index:
    """``pandas.core.indexes.base._new_Index`` for a plain or range index."""
    if cls not in _INDEX_CLASSES or not isinstance(d, dict) or not set(d) <= _INDEX_KEYS:
        raise UnsafePickleError(f"refusing index record ({cls!r}, {sorted(d) if isinstance(d, dict) else d!r})")
    return _new_Index(_INDEX_CLASSES[cls], d)


def _block(values: Any, placement: Any, ndim: Any) -> Block:
    """``pandas._libs.internals._unpickle_block``: column positions are checked by the manager."""
    if not isinstance(values, (np.ndarray, ArrowStringArray, StringArray)) or ndim not in (1, 2):
        raise UnsafePickleError(f"refusing block record of {type(values).__name__}")
    if not isinstance(placement, (slice, np.ndarray)):
        raise UnsafePickleError("block record names no column positions")
    return _unpickle_block(values, placement, ndim)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocols 0 and 1): an empty object of an allowlisted class."""
    if cls not in (_EmptyFrame, _EmptyArrowStrings, _BlockManagerMaker) or base is not object or state is not None:
        raise UnsafePickleError(f"refusing copyreg._reconstructor({cls!r}, {base!r}, ...)")
    return cls.__new__(cls)


def _string_dtype(storage: Any = None, na_value: Any = pd.NA) -> pd.StringDtype:
    if storage not in (None, "python", "pyarrow") or not (na_value is pd.NA or _is_nan(na_value)):
        raise UnsafePickleError(f"refusing string dtype record ({storage!r}, {na_value!r})")
    return pd.StringDtype(storage) if na_value is pd.NA else pd.StringDtype(storage, na_value)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _empty_string_array(cls: Any, checksum: Any, state: Any) -> StringArray:
    """``pandas._libs.arrays.__pyx_unpickle_NDArrayBacked`` for a python-backed string array; BUILD fills it."""
    if cls is not _STRING_ARRAY or not isinstance(checksum, int) or state is not None:
        raise UnsafePickleError(f"refusing array record ({cls!r}, ...)")
    return _pd_arrays.__pyx_unpickle_NDArrayBacked(StringArray, checksum, None)


_ARROW_STRING_ALIASES = {"string", "str", "utf8", "large_string", "large_str", "large_utf8"}


def _arrow_type(alias: Any):
    """``pyarrow.lib.type_for_alias``, for string types only."""
    import pyarrow as pa

    if alias not in _ARROW_STRING_ALIASES:
        raise UnsafePickleError(f"refusing pyarrow type {alias!r} (only string types)")
    return pa.lib.type_for_alias(alias)


def _arrow_buffer(data: Any):
    """``pyarrow.lib.py_buffer`` over pickled bytes."""
    import pyarrow as pa

    if not isinstance(data, (bytes, bytearray, pickle.PickleBuffer)):
        raise UnsafePickleError("pyarrow buffer record holds no bytes")
    return pa.py_buffer(data)


def _is_string_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    return isinstance(arrow_type, pa.DataType) and (
        pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    )


def _arrow_array(data: Any):
    """``pyarrow.lib._restore_array`` for a string array, fully validated (offsets inside the data)."""
    import pyarrow as pa

    ok = isinstance(data, tuple) and len(data) == 7
    if ok:
        arrow_type, length, null_count, offset, buffers, children, dictionary = data
        ok = (
            _is_string_type(arrow_type)
            and all(type(n) is int for n in (length, null_count, offset))
            and min(length, offset) >= 0
            and null_count >= -1
            and children == []
            and dictionary is None
            and isinstance(buffers, list)
            and len(buffers) == 3
            and (buffers[0] is None or isinstance(buffers[0], pa.Buffer))
            and all(isinstance(b, pa.Buffer) for b in buffers[1:])
        )
    if not ok:
        raise UnsafePickleError("refusing pyarrow array record (only plain string arrays)")
    array = pa.lib._restore_array(data)
    try:
        array.validate(full=True)
    except pa.ArrowException as err:
        raise UnsafePickleError(f"malformed pyarrow string array ({err})") from None
    return array


# ------------------------------------------------------------------ state setters


def _set_frame_state(frame: pd.DataFrame, state: Any) -> None:
    if type(frame) is not pd.DataFrame or "_mgr" in frame.__dict__ or not isinstance(state, dict):
        raise UnsafePickleError("refusing DataFrame state")
    if not all(isinstance(key, str) and not key.startswith("__") for key in state):  # e.g. ``__class__``
        raise UnsafePickleError("refusing DataFrame state with special attributes")
    _check_manager(state.get("_mgr", state.get("_data")))
    frame.__setstate__(state)


def _check_manager(manager: Any) -> None:
    if type(manager) is not BlockManager or manager.axes is None or manager.blocks is None:
        raise UnsafePickleError("DataFrame state holds no complete block manager")


def _set_manager_state(manager: BlockManager, state: Any) -> None:
    """pandas 1.x: ``(axes, values, items, {"0.14.1": {"axes": [...], "blocks": [{"values", "mgr_locs"}]}})``."""
    try:
        new = state[3]["0.14.1"]
        axes, blocks = new["axes"], new["blocks"]
        placements = [BlockPlacement(b["mgr_locs"]) for b in blocks]
        num_columns = len(axes[0])
    except (TypeError, KeyError, IndexError, ValueError):
        raise UnsafePickleError("refusing block manager state of unknown form") from None
    if type(manager) is not BlockManager or manager.axes is not None or len(axes) != 2:
        raise UnsafePickleError("refusing block manager state")
    if not all(isinstance(b["mgr_locs"], (slice, np.ndarray, list)) for b in blocks):
        raise UnsafePickleError("block state names no column positions")
    _check_placements(placements, num_columns)
    manager.__setstate__(state)


def _set_arrow_strings_state(array: ArrowStringArray, state: Any) -> None:
    if type(array) is not ArrowStringArray or "_pa_array" in array.__dict__ or not isinstance(state, dict):
        raise UnsafePickleError("refusing ArrowStringArray state")
    import pyarrow as pa

    data = state.get("_pa_array", state.get("_data"))
    if not isinstance(data, (pa.Array, pa.ChunkedArray)) or not _is_string_type(data.type):
        raise UnsafePickleError("ArrowStringArray state holds no pyarrow string array")
    if not isinstance(state.get("_dtype"), pd.StringDtype):
        raise UnsafePickleError("ArrowStringArray state holds no string dtype")
    array.__setstate__(state)


def _set_string_array_state(array: StringArray, state: Any) -> None:
    """A python-backed string array: ``(StringDtype, object ndarray)``."""
    if type(array) is not StringArray or not isinstance(state, tuple) or len(state) != 2:
        raise UnsafePickleError("refusing StringArray state")
    dtype, values = state
    if not isinstance(dtype, pd.StringDtype) or type(values) is not np.ndarray or values.dtype != object:
        raise UnsafePickleError("StringArray state holds no string dtype and object array")
    array.__setstate__(state)


_SETTERS = {
    pd.DataFrame: _set_frame_state,
    BlockManager: _set_manager_state,
    ArrowStringArray: _set_arrow_strings_state,
    StringArray: _set_string_array_state,
    np.ndarray: set_ndarray_state,
    np.dtype: set_dtype_state,
}


# ------------------------------------------------------------------ the allowlist


def _object_dtype_allowed(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    return numpy_dtype(spec, align, copy, allow_object=True)


def _names(value: object, *qualnames: str) -> dict[str, object]:
    return dict.fromkeys(qualnames, value)


def _older_names(allowed: dict[str, object]) -> dict[str, object]:
    """Names older pandas wrote for allowlisted objects (``pandas.core.indexes.numeric.Int64Index``), from
    pandas' own map of moved classes where it has one."""
    try:
        from pandas.compat.pickle_compat import _class_locations_map as moved
    except ImportError:
        return {}
    old = {}
    for (module, name), (new_module, new_name) in moved.items():
        if f"{new_module}.{new_name}" in allowed:
            old[f"{module}.{name}"] = allowed[f"{new_module}.{new_name}"]
    return old


#: Every global a DataFrame pickle of numbers, lists, tuples and strings needs, as written by pandas
#: 1.x-3.x with numpy 1.x/2.x (``numpy.core`` / ``numpy._core``) and protocols 0-5.
FRAME_ALLOWED: dict[str, object] = {
    **_names(_EmptyFrame, "pandas.DataFrame", "pandas.core.frame.DataFrame"),
    **_names(_BlockManagerMaker, "pandas.core.internals.managers.BlockManager"),
    **_names(_block, "pandas._libs.internals._unpickle_block"),
    **_names(_new_index, "pandas.core.indexes.base._new_Index"),
    **_names(_INDEX, "pandas.Index", "pandas.core.indexes.base.Index"),
    **_names(_RANGE_INDEX, "pandas.RangeIndex", "pandas.core.indexes.range.RangeIndex"),
    **_names(_string_dtype, "pandas.StringDtype", "pandas.core.arrays.string_.StringDtype"),
    **_names(_EmptyArrowStrings, "pandas.arrays.ArrowStringArray", "pandas.core.arrays.string_arrow.ArrowStringArray"),
    **_names(_STRING_ARRAY, "pandas.arrays.StringArray", "pandas.core.arrays.string_.StringArray"),
    **_names(_empty_string_array, "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked"),
    **_names(pd.NA, "pandas.NA", "pandas._libs.missing.NA"),
    **_names(_arrow_array, "pyarrow.lib._restore_array"),
    **_names(_arrow_type, "pyarrow.lib.type_for_alias"),
    **_names(_arrow_buffer, "pyarrow.lib.py_buffer"),
    **_names(numpy_reconstruct, "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"),
    **_names(NDARRAY, "numpy.ndarray"),
    **_names(_object_dtype_allowed, "numpy.dtype"),
    **_names(numpy_frombuffer, "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer"),
    **_names(numpy_scalar, "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"),
    **_names(_reconstructor, "copyreg._reconstructor"),
    **_names(object, "builtins.object"),
    **_names(slice, "builtins.slice"),
    **_names(bytearray, "builtins.bytearray"),
    **_names(codecs_encode, "_codecs.encode"),
}
FRAME_ALLOWED.update({name: value for name, value in _older_names(FRAME_ALLOWED).items() if name not in FRAME_ALLOWED})


def load_frame_pickle(path: str | Path) -> object:
    """Unpickle ``path`` allowing only :data:`FRAME_ALLOWED`.

    Raises :class:`UnsafePickleError` for any other global or a record of the wrong form; other
    exceptions (truncated or corrupt files) propagate for the caller to word.
    """
    with open(path, "rb") as file:
        obj = RestrictedUnpickler(
            file, allowed=FRAME_ALLOWED, source=str(path), setters=_SETTERS, encoding="latin1", hint=HINT
        ).load()
    if isinstance(obj, pd.DataFrame) and "_mgr" not in obj.__dict__:
        raise UnsafePickleError(f"{path}: the pickled DataFrame was never given its data", hint=HINT)
    return obj
