"""Building TensorRT engines from an export, and the metadata written beside each ``.plan``.

Written to the TensorRT 10.x / 11.x Python API: strongly typed networks (precision comes from the
graph's tensor types, so ``--fp16`` needs the fp16 export on both versions), one optimization profile
per entry of the profiles dict, a persisted timing cache. ``tensorrt_rtx`` is used when it is the
TensorRT module present (its networks are strongly typed; it has no timing cache).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ilora_export.errors import IloraError
from ilora_export.fileio import atomic_path, sha256_file

INSTALL_HINT = (
    "install TensorRT's Python package for your CUDA (pip install tensorrt from NVIDIA's index, "
    "JetPack on Jetson, an NGC container) or TensorRT-RTX (pip install tensorrt-rtx); or run "
    "`ilora-export trt EXPORT --emit-script` and build with trtexec on the target"
)


class EngineError(IloraError):
    """A TensorRT engine that cannot be built or used here."""


# TensorRT 10.0 and 10.1 list a known accuracy issue with two consecutive GEMVs, the adapter's x·A·B at
# batch 1; 10.2 is also the first release whose device-memory calls (``*_v2``) this package uses.
MIN_TENSORRT = (10, 2)


def version_problem(module: str, version: str) -> str | None:
    """Why ``module`` (``tensorrt`` or ``tensorrt_rtx``) at ``version`` cannot be used, or None."""
    if module != "tensorrt":  # TensorRT-RTX numbers its releases 1.x; every release has the v2 calls
        return None
    try:
        found = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return f"TensorRT version {version!r} is not a release number"
    if found < MIN_TENSORRT:
        return (
            f"TensorRT {version} is older than {'.'.join(map(str, MIN_TENSORRT))}: 10.0 and 10.1 have a known "
            "accuracy issue with two consecutive GEMVs, the adapter's A·B product at batch 1"
        )
    return None


def import_tensorrt():
    """The TensorRT module (``tensorrt``, else ``tensorrt_rtx``) at a supported version; EngineError naming
    what is missing."""
    errors = []
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            trt = __import__(name)
        except (ImportError, OSError) as err:  # OSError: a stub package whose libraries failed to load
            errors.append(f"{name}: {err}")
            continue
        problem = version_problem(name, str(getattr(trt, "__version__", "")))
        if problem:
            raise EngineError(problem, "install TensorRT >= 10.2 (pip install -e '.[trt]')")
        return trt
    raise EngineError("TensorRT is not importable (" + "; ".join(errors) + ")", INSTALL_HINT)


def device_facts() -> dict:
    """GPU name and compute capability of the current CUDA device (through PyTorch)."""
    import torch

    if not torch.cuda.is_available():
        raise EngineError("no CUDA device is visible", "TensorRT engines build and run on an NVIDIA GPU")
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def metadata_path(plan: Path) -> Path:
    return plan.with_suffix(".json")


def engine_metadata(graph: str, dtype: str, manifest_sha256: str, limits, profiles: dict, **facts) -> dict:
    """The ``.json`` written beside a plan. ``facts``: the TensorRT module and version and the GPU, when
    the engine is built here; a plan built by the emitted trtexec script has ``"builder": "trtexec"``
    and no facts (TensorRT itself refuses to deserialize a plan from another version or GPU)."""
    return {
        "builder": "ilora-export" if facts else "trtexec",
        **facts,
        "graph": graph,
        "dtype": dtype,
        "source_manifest_sha256": manifest_sha256,
        "limits": dict(limits.__dict__),
        "profiles": {n: {t: [list(s) for s in shapes] for t, shapes in p.items()} for n, p in profiles.items()},
    }


def write_metadata(plan: Path, meta: dict) -> None:
    with atomic_path(metadata_path(plan)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def check_metadata(
    meta: dict, *, trt_version: str, gpu: str, compute_capability: str, plan: Path, manifest_sha256: str | None = None
) -> None:
    """EngineError unless the engine was built from this export (its manifest hash), and, when built
    here rather than by trtexec, for this TensorRT version and GPU."""
    if manifest_sha256 is not None and meta.get("source_manifest_sha256") != manifest_sha256:
        raise EngineError(
            f"{plan}: built from another export (its manifest.json hash differs from the export's)",
            "rebuild the engines from this export: ilora-export trt EXPORT",
        )
    if meta.get("builder") == "trtexec":
        return
    if meta.get("tensorrt_version") != trt_version:
        raise EngineError(
            f"{plan}: built with TensorRT {meta.get('tensorrt_version')}, this is {trt_version}",
            "rebuild the engines here: ilora-export trt EXPORT",
        )
    if meta.get("compute_capability") != compute_capability or meta.get("gpu") != gpu:
        raise EngineError(
            f"{plan}: built for {meta.get('gpu')} (compute capability {meta.get('compute_capability')}), "
            f"this is {gpu} ({compute_capability})",
            "rebuild the engines on this GPU: ilora-export trt EXPORT",
        )


def read_metadata(plan: Path) -> dict:
    file = metadata_path(plan)
    if not plan.is_file():
        raise EngineError(
            f"{plan}: missing",
            "build the engines: ilora-export trt EXPORT, or run the build_engines.sh that --emit-script wrote",
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineError(
            f"{file}: missing beside {plan.name}", "rebuild the engines: ilora-export trt EXPORT"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EngineError(f"{file}: unreadable ({err})", "rebuild the engines") from None
    if not isinstance(meta, dict):
        raise EngineError(f"{file}: not an engine's metadata", "rebuild the engines")
    return meta


def build_engine(
    trt,
    onnx_path: Path,
    plan: Path,
    profiles: dict,
    *,
    timing_cache: Path,
    meta: dict,
    fp32: bool,
    workspace_mib: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Parse ``onnx_path`` (external data beside it), build a strongly typed engine, write plan + metadata.

    ``fp32``: TF32 is cleared, so an fp32 graph's matmuls run in fp32 (TensorRT enables TF32 by default)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if creation is not None and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(
            f"{onnx_path}: TensorRT's ONNX parser failed ({errors[:400]})",
            "check the TensorRT version supports the graph's opset; see docs/tensorrt.md",
        )
    config = builder.create_builder_config()
    if fp32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    cache = None
    if hasattr(config, "create_timing_cache"):  # TensorRT-RTX has none
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            log(f"{timing_cache}: made by another TensorRT version or GPU; this build starts a new one")
            cache = config.create_timing_cache(b"")
            if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
                raise EngineError("TensorRT refused an empty timing cache", "see TensorRT's log above")
    for index, (name, profile) in enumerate(profiles.items()):
        p = builder.create_optimization_profile()
        for tensor, (lo, opt, hi) in profile.items():
            p.set_shape(tensor, lo, opt, hi)
        if config.add_optimization_profile(p) != index:
            raise EngineError(
                f"{onnx_path}: optimization profile {index} ({name}) was rejected", "check the --max-* limits"
            )
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"{onnx_path}: TensorRT could not build the engine (see its log above)",
            "lower --max-batch / --max-prompt, or check GPU memory",
        )
    with atomic_path(plan) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    meta = meta | {"build_seconds": round(time.perf_counter() - t0, 1), "plan_sha256": sha256_file(plan)}
    write_metadata(plan, meta)
    log(f"{plan.name}: built in {meta['build_seconds']} s")
    return meta


def _numpy_name(dtype) -> str:
    """A TensorRT DataType as the contract's numpy name."""
    name = getattr(dtype, "name", str(dtype)).rsplit(".", 1)[-1]
    return {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32"}.get(
        name, name.lower()
    )


def engine_io_problems(trt, engine, contract, profiles: dict) -> list[str]:
    """What differs between a deserialized engine and the export's contract and the recorded profiles:
    names, input/output modes, dtypes and fixed dims (the contract's one comparison), the number of
    profiles, and each dynamic input's (min, opt, max) in each profile."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = (name, _numpy_name(engine.get_tensor_dtype(name)), tuple(engine.get_tensor_shape(name)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(entry)
    problems = contract.io_problems(inputs, outputs, ordered=False)
    if problems:
        return problems
    if engine.num_optimization_profiles != len(profiles):
        return [f"{engine.num_optimization_profiles} optimization profiles, the limits give {len(profiles)}"]
    for index, (label, profile) in enumerate(profiles.items()):
        for name, _, shape in inputs:
            if -1 not in shape:  # a fixed input (the expert bank) has no range
                continue
            found = tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, index))
            if found != tuple(tuple(s) for s in profile[name]):
                problems.append(
                    f"profile {index} ({label}): {name} ranges over {[list(s) for s in found]}, "
                    f"the limits give {[list(s) for s in profile[name]]}"
                )
    return problems


def load_engine(trt, runtime, plan: Path, contract, profiles: dict, *, facts: dict, manifest_sha256: str):
    """Deserialize ``plan`` after its metadata checks, then check the engine's I/O (EngineError otherwise)."""
    meta = read_metadata(plan)
    check_metadata(meta, trt_version=trt.__version__, plan=plan, manifest_sha256=manifest_sha256, **facts)
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise EngineError(
            f"{plan}: TensorRT {trt.__version__} could not deserialize the engine (built by another TensorRT "
            "version or for another GPU?)",
            "rebuild it here: ilora-export trt EXPORT, or run build_engines.sh on this device",
        )
    problems = engine_io_problems(trt, engine, contract, profiles)
    if problems:
        raise EngineError(
            f"{plan}: the engine does not match the export's contract and limits: " + "; ".join(problems[:3]),
            "rebuild the engines from this export with the limits in engines.json: ilora-export trt EXPORT",
        )
    return engine
