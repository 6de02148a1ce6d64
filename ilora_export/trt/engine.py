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


def import_tensorrt():
    """The TensorRT module (``tensorrt``, else ``tensorrt_rtx``); EngineError naming what is missing."""
    errors = []
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            return __import__(name)
        except (ImportError, OSError) as err:  # OSError: a stub package whose libraries failed to load
            errors.append(f"{name}: {err}")
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


def check_metadata(meta: dict, *, trt_version: str, gpu: str, compute_capability: str, plan: Path) -> None:
    """EngineError unless the engine was built for this TensorRT version and GPU."""
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
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineError(
            f"{file}: missing beside {plan.name}", "rebuild the engines: ilora-export trt EXPORT"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise EngineError(f"{file}: unreadable ({err})", "rebuild the engines") from None


def build_engine(
    trt,
    onnx_path: Path,
    plan: Path,
    profiles: dict,
    *,
    timing_cache: Path,
    meta: dict,
    workspace_mib: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Parse ``onnx_path`` (external data beside it), build a strongly typed engine, write plan + metadata."""
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
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    cache = None
    if hasattr(config, "create_timing_cache"):
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    for name, profile in profiles.items():
        p = builder.create_optimization_profile()
        for tensor, (lo, opt, hi) in profile.items():
            p.set_shape(tensor, lo, opt, hi)
        if config.add_optimization_profile(p) < 0:
            raise EngineError(f"{onnx_path}: optimization profile {name!r} was rejected", "check --max-* limits")
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
    meta = meta | {
        "build_seconds": round(time.perf_counter() - t0, 1),
        "plan_sha256": sha256_file(plan),
        "profiles": {n: {t: [list(s) for s in shapes] for t, shapes in p.items()} for n, p in profiles.items()},
    }
    with atomic_path(metadata_path(plan)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log(f"{plan.name}: built in {meta['build_seconds']} s")
    return meta
