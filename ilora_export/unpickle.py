"""Restricted unpickling: only allowlisted globals, state set only on objects meant to take it.

:class:`RestrictedUnpickler` is the pure-python unpickler with two doors closed. Every global a pickle
names (``module.name``, python 2 names normalised) is looked up in an *allowlist* mapping it to the
object to use instead (a safe function, a plain type, an inert *stand-in* class); nothing else is
imported or called, and any other name raises :class:`UnsafePickleError` naming it and the file.
BUILD (set the state of the object just made) runs only through a *state setter* registered for the
object's type; anything else is refused.

This module knows no file format: the checkpoint loader (torch files) and the dataset reader (pandas
DataFrame pickles) each bring their allowlist and setters. The numpy helpers below serve both; numpy is
imported only when a pickle uses them.
"""

from __future__ import annotations

import _compat_pickle
import pickle
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, ClassVar

from ilora_export.errors import UnsafePickleError

__all__ = [
    "DEFAULT_HINT",
    "NDARRAY",
    "PickledDict",
    "PickledObject",
    "RestrictedUnpickler",
    "StateSetter",
    "Token",
    "codecs_encode",
    "numpy_dtype",
    "numpy_frombuffer",
    "numpy_reconstruct",
    "numpy_scalar",
    "set_dict_state",
    "set_dtype_state",
    "set_ndarray_state",
    "stand_in",
    "stand_ins",
]

DEFAULT_HINT = (
    "The file may be malicious, or it holds an object this loader does not know. "
    "Only load files from sources you trust; do not bypass the allowlist."
)

#: ``setter(obj, state)``: give ``obj`` the pickled ``state`` or raise :class:`UnsafePickleError`.
StateSetter = Callable[[Any, Any], None]


# ------------------------------------------------------------------ stand-ins


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


class Token:
    """What a class name means where a pickle may only hand it to an allowlisted function (as
    ``numpy.ndarray`` to :func:`numpy_reconstruct`): not callable, takes no state."""

    def __init__(self, qualname: str):
        self.qualname = qualname

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


#: ``numpy.ndarray`` in a pickle: only the first argument of :func:`numpy_reconstruct`.
NDARRAY = Token("numpy.ndarray")


# ------------------------------------------------------------------ state setters


def _set_record_state(obj: PickledObject, state: Any) -> None:
    obj.__setstate__(state)


def set_dict_state(obj: Any, state: Any) -> None:
    """Plain attributes only (``obj.__dict__.update``): e.g. a state dict's ``_metadata``."""
    if not isinstance(state, dict):
        raise UnsafePickleError(f"pickled state of {type(obj).__name__} is not a dict")
    obj.__dict__.update(state)


def set_dtype_state(dtype: Any, state: Any) -> None:
    """A numpy dtype's state may change its byte order, nothing else.

    The full state could add fields or subarrays (object fields among them) or clear the flags that
    stop numpy from reading object pointers out of raw bytes, so it must equal the dtype's own.
    """
    own = dtype.__reduce__()[2]
    same = isinstance(state, tuple) and len(state) == len(own) and state[:1] + state[2:] == own[:1] + own[2:]
    order_ok = same and (state[1] == own[1] if own[1] == "|" else state[1] in ("<", ">", "="))
    if not order_ok:
        raise UnsafePickleError(
            f"refusing numpy dtype state {state!r} for {dtype} (only the byte order may differ from a plain dtype)"
        )
    dtype.__setstate__(state)


def set_ndarray_state(array: Any, state: Any) -> None:
    """Fill an empty array made by :func:`numpy_reconstruct` (``(version, shape, dtype, fortran, data)``).

    Object arrays take their items from a list of unpickled objects; numpy refuses raw bytes for them.
    """
    import numpy as np

    # only the empty int8 placeholder numpy_reconstruct made (or one a BUILD left just like it)
    fresh = (
        type(array) is np.ndarray
        and array.shape == (0,)
        and array.dtype == np.int8
        and array.base is None
        and array.flags.owndata
    )
    if not fresh or not isinstance(state, tuple) or len(state) != 5:
        raise UnsafePickleError("refusing to set the state of a numpy array twice or in an unknown form")
    dtype = state[2]
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError("numpy array state names no dtype")
    _check_plain_dtype(dtype, allow_object=True)
    array.__setstate__(state)


# ------------------------------------------------------------------ numpy reconstruction


def _check_plain_dtype(dtype: Any, *, allow_object: bool) -> None:
    """A dtype without fields or subarrays, with the flags of its kind (object only if allowed)."""
    import numpy as np

    if dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(f"refusing structured numpy dtype {dtype}")
    if dtype.flags != np.dtype(dtype.str).flags:
        raise UnsafePickleError(f"refusing numpy dtype {dtype} with altered flags")
    if dtype.hasobject and not allow_object:
        raise UnsafePickleError("refusing a numpy object dtype where only numbers belong")


def numpy_dtype(spec: Any, align: Any = False, copy: Any = False, *, allow_object: bool = False):
    """``numpy.dtype(spec)`` for a plain type code; always a fresh copy (BUILD must never reach numpy's
    shared dtype instances). Object dtypes only with ``allow_object``."""
    import numpy as np

    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy dtype {spec!r} is not a plain type code")
    dtype = np.dtype(spec, bool(align), True)
    _check_plain_dtype(dtype, allow_object=allow_object)
    return dtype


def numpy_scalar(dtype: Any, data: Any = None):
    """``numpy.core.multiarray.scalar``: one number of a plain dtype from its bytes."""
    import numpy as np

    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar record is not a plain number")
    _check_plain_dtype(dtype, allow_object=False)
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def numpy_reconstruct(subtype: Any, shape: Any, dtype: Any):
    """``numpy.core.multiarray._reconstruct``: the empty plain array BUILD then fills (``subtype`` is
    what the allowlist gives for ``numpy.ndarray``: :data:`NDARRAY`)."""
    import numpy as np

    if subtype is not NDARRAY or shape != (0,) or dtype not in (b"b", "b"):
        raise UnsafePickleError(f"refusing numpy array record ({subtype!r}, {shape!r}, {dtype!r})")
    return np.ndarray.__new__(np.ndarray, (0,), "b")


def numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any):
    """``numpy.core.numeric._frombuffer`` (protocol 5): a plain, non-object array over bytes."""
    import numpy as np

    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype):
        raise UnsafePickleError("numpy buffer record holds no bytes or no dtype")
    _check_plain_dtype(dtype, allow_object=False)
    if not isinstance(shape, tuple) or not all(isinstance(n, int) for n in shape) or order not in ("C", "F"):
        raise UnsafePickleError(f"malformed numpy buffer record (shape {shape!r}, order {order!r})")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode``: how protocols 0-2 spell bytes (latin1 text)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("only latin1-encoded byte strings may be rebuilt")
    return text.encode("latin1")


# ------------------------------------------------------------------ the unpickler


def _load_build(self: RestrictedUnpickler) -> None:
    """BUILD: set the state of the object on the stack through its type's setter, or refuse."""
    state = self.stack.pop()
    obj = self.stack[-1]
    setter = self.setter_for(obj)
    if setter is None:
        raise UnsafePickleError(f"{self.source}: refusing to set the state of {type(obj).__name__!r}")
    setter(obj, state)


class RestrictedUnpickler(pickle._Unpickler):  # the pure-python unpickler: BUILD can be overridden
    """Unpickle with only the globals of ``allowed`` and only the state setters of ``setters``.

        ``allowed`` maps ``"module.name"`` (python 2 names normalised) to the object to use instead.
        ``setters`` maps a type to the :data:`StateSetter` for its instances (and those of its subclasses);
        stand-ins always take their state. ``persistent_load(pid)`` resolves persistent ids (torch storages);
        without it a persistent id is refused. ``hint`` is the refusals' hint. Allowlisted functions and setters
    raise :class:`UnsafePickleError` without the file name; :meth:`load` adds it.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(
        self,
        file: BinaryIO,
        *,
        allowed: Mapping[str, object],
        source: str,
        setters: Mapping[type, StateSetter] | None = None,
        persistent_load: Callable[[Any], object] | None = None,
        encoding: str = "utf-8",
        hint: str = DEFAULT_HINT,
    ):
        super().__init__(file, encoding=encoding)
        self.allowed = allowed
        self.source = source
        self.setters: dict[type, StateSetter] = {
            PickledObject: _set_record_state,
            PickledDict: set_dict_state,
            **(setters or {}),
        }
        self._persistent = persistent_load
        self.hint = hint

    def setter_for(self, obj: object) -> StateSetter | None:
        """The setter registered for the nearest class of ``obj``, or None."""
        for cls in type(obj).__mro__:
            if cls in self.setters:
                return self.setters[cls]
        return None

    def find_class(self, module: str, name: str) -> object:
        if self.proto < 3:  # python 2 names (``__builtin__.set``)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        try:
            return self.allowed[qualname]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {qualname!r} (not in the allowlist)",
                hint=self.hint,
            ) from None

    def load(self) -> object:
        """The unpickled object; every refusal names the file."""
        try:
            return super().load()
        except UnsafePickleError as err:
            if err.message.startswith(f"{self.source}: "):
                raise
            raise UnsafePickleError(f"{self.source}: {err.message}", hint=err.hint or self.hint) from None

    def persistent_load(self, pid: Any) -> object:
        if self._persistent is None:
            raise UnsafePickleError(f"{self.source}: unexpected persistent id {pid!r}")
        return self._persistent(pid)
