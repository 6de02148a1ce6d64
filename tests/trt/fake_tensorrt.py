"""A stand-in for the ``tensorrt`` module that follows TensorRT's documented call protocol, for CPU tests.

It is evidence of protocol only: that the code around TensorRT calls it in a valid order, checks what it
returns and binds the right memory. It proves nothing about TensorRT building or running these graphs
(nothing here has run on a GPU). The rules it encodes, from the TensorRT 10.x Python API docs:

- build: a strongly typed network parsed from ONNX (inputs and outputs with the graph's names, dtypes
  and dims, a symbolic dim as -1); ``add_optimization_profile`` returns -1 for a profile that misses a
  dynamic input, disagrees with a fixed dim, or has min > opt > max; TF32 is on until cleared; a timing
  cache made by another version is refused by ``set_timing_cache`` (False);
- load: ``deserialize_cuda_engine`` returns None for a plan of another version (or not a plan);
- run: a new context is on profile 0; selecting a profile forgets the shapes set before;
  ``set_input_shape`` returns False outside the selected profile's [min, max], for a name that is not an
  input, or for a wrong rank; ``set_tensor_address`` returns False for a name the engine lacks or a null
  address; ``execute_async_v3`` returns False unless every dynamic input has a shape, every I/O tensor an
  address, and a user-managed context its device memory.

When a call succeeds, ``execute_async_v3`` runs the ONNX graph with onnxruntime (CPU) on the memory at
the bound addresses, which the tests bind to host tensors, and writes the outputs there.
"""

from __future__ import annotations

import ctypes
import enum
import json
import os

import numpy as np

__version__ = "10.16.0"
MAGIC = b"FAKE-TRT-PLAN\n"
CACHE_MAGIC = b"FAKE-TRT-TIMING-CACHE:"
DEVICE_MEMORY = 4096  # activation bytes every engine of this fake asks for


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    BOOL = 4
    INT64 = 6


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    TF32 = 8


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 6: "INT32", 9: "BOOL", 7: "INT64"}
_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "BOOL": np.bool_, "INT64": np.int64}


class Logger:
    WARNING = 2

    def __init__(self, severity=WARNING):
        self.severity = severity


class _Network:
    def __init__(self, flags: int):
        self.strongly_typed = bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        self.onnx = None
        self.io: list[dict] = []


class OnnxParser:
    def __init__(self, network: _Network, logger):
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        import onnx

        model = onnx.load(path, load_external_data=False)

        def entry(value, mode):
            t = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            return {"name": value.name, "mode": mode, "dtype": _ONNX_TYPES[t.elem_type], "shape": dims}

        self.network.onnx = os.path.abspath(path)
        self.network.io = [entry(v, "INPUT") for v in model.graph.input] + [
            entry(v, "OUTPUT") for v in model.graph.output
        ]
        return True

    def get_error(self, i):
        raise IndexError(i)


class _Profile:
    def __init__(self):
        self.shapes: dict[str, list] = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class _TimingCache:
    def __init__(self, version: str | None):
        self.version = version

    def serialize(self) -> bytes:
        return CACHE_MAGIC + __version__.encode()


class _Config:
    def __init__(self):
        self.flags = {BuilderFlag.TF32}
        self.profiles: list[_Profile] = []
        self.cache: _TimingCache | None = None

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool, size):
        pass

    def create_timing_cache(self, blob: bytes):
        if not blob:
            return _TimingCache(None)
        if not blob.startswith(CACHE_MAGIC):
            return None
        return _TimingCache(blob[len(CACHE_MAGIC) :].decode())

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        if cache.version not in (None, __version__) and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def add_optimization_profile(self, profile: _Profile) -> int:
        for lo, opt, hi in profile.shapes.values():
            if not len(lo) == len(opt) == len(hi) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1


def _profile_fits(network: _Network, profile: _Profile) -> bool:
    inputs = {e["name"]: e["shape"] for e in network.io if e["mode"] == "INPUT"}
    if any(-1 in shape and name not in profile.shapes for name, shape in inputs.items()):
        return False
    for name, (lo, _, _) in profile.shapes.items():
        shape = inputs.get(name)
        if shape is None or len(shape) != len(lo):
            return False
        if any(f != -1 and not f == a == b == c for f, a, b, c in zip(shape, *profile.shapes[name])):
            return False
    return True


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        return _Network(flags)

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config):
        if not network.strongly_typed or not config.profiles:
            return None
        if not all(_profile_fits(network, p) for p in config.profiles):
            return None
        plan = {
            "version": __version__,
            "onnx": network.onnx,
            "io": network.io,
            "profiles": [p.shapes for p in config.profiles],
            "tf32": BuilderFlag.TF32 in config.flags,
        }
        return MAGIC + json.dumps(plan).encode()


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, blob: bytes):
        if not blob.startswith(MAGIC):
            return None
        plan = json.loads(blob[len(MAGIC) :])
        if plan["version"] != __version__:
            return None
        return _Engine(plan)


class _Engine:
    def __init__(self, plan: dict):
        self.plan = plan
        self.io = {e["name"]: e for e in plan["io"]}
        self.names = [e["name"] for e in plan["io"]]
        self.contexts: list[_Context] = []
        self._session = None

    num_io_tensors = property(lambda self: len(self.names))
    num_optimization_profiles = property(lambda self: len(self.plan["profiles"]))
    device_memory_size_v2 = DEVICE_MEMORY

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str):
        return TensorIOMode[self.io[name]["mode"]] if name in self.io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str):
        return DataType[self.io[name]["dtype"]]

    def get_tensor_shape(self, name: str):
        return tuple(self.io[name]["shape"]) if name in self.io else (-1,)

    def get_tensor_profile_shape(self, name: str, profile: int):
        if self.io.get(name, {}).get("mode") != "INPUT":
            raise RuntimeError(f"{name} is not an input")
        fixed = self.io[name]["shape"]
        if -1 not in fixed:
            return [tuple(fixed)] * 3
        return [tuple(s) for s in self.plan["profiles"][profile][name]]

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        ctx = _Context(self, strategy)
        self.contexts.append(ctx)
        return ctx

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self.plan["onnx"], providers=["CPUExecutionProvider"])
        return self._session


def _host_view(address: int, dtype, shape) -> np.ndarray:
    count = int(np.prod(shape))
    raw = (ctypes.c_uint8 * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.ctypeslib.as_array(raw).view(dtype).reshape(shape)


class _Context:
    def __init__(self, engine: _Engine, strategy):
        self.engine = engine
        self.user_managed = strategy == ExecutionContextAllocationStrategy.USER_MANAGED
        self.profile = 0
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.device_memory: tuple[int, int] | None = None
        self.calls = 0

    def set_optimization_profile_async(self, profile: int, stream) -> bool:
        if not 0 <= profile < self.engine.num_optimization_profiles:
            return False
        self.profile = profile
        self.shapes = {}
        return True

    def set_device_memory(self, address: int, size: int) -> None:
        self.device_memory = (address, size)

    def set_input_shape(self, name: str, shape) -> bool:
        io = self.engine.io.get(name)
        if io is None or io["mode"] != "INPUT" or len(shape) != len(io["shape"]):
            return False
        lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.io or not address:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream) -> bool:
        io = self.engine.io
        dynamic = [n for n, e in io.items() if e["mode"] == "INPUT" and -1 in e["shape"]]
        if any(n not in self.shapes for n in dynamic) or set(self.addresses) != set(io):
            return False
        if self.user_managed and (self.device_memory is None or self.device_memory[1] < DEVICE_MEMORY):
            return False
        feeds = {}
        for name, e in io.items():
            if e["mode"] == "INPUT":
                shape = self.shapes.get(name, tuple(e["shape"]))
                feeds[name] = _host_view(self.addresses[name], _NUMPY[e["dtype"]], shape).copy()
        session = self.engine.session()
        outputs = session.run(None, feeds)
        for meta, value in zip(session.get_outputs(), outputs):
            _host_view(self.addresses[meta.name], value.dtype, value.shape)[...] = value
        self.calls += 1
        return True
