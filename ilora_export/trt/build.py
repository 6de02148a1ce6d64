"""``build_engines``: the library call behind ``ilora-export trt``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ilora_export.artifacts.engines import export_reference, write_engines_index
from ilora_export.artifacts.manifest import MANIFEST, read_manifest
from ilora_export.fileio import atomic_path, sha256_file
from ilora_export.trt.engine import (
    EngineError,
    build_engine,
    device_facts,
    engine_metadata,
    import_tensorrt,
    write_metadata,
)
from ilora_export.trt.operators import check_export
from ilora_export.trt.profiles import Limits, engine_profiles
from ilora_export.trt.script import build_script, trtexec_command

SCRIPT = "build_engines.sh"
TIMING_CACHE = "timing.cache"


def build_engines(
    export_dir,
    output=None,
    *,
    fp16: bool = False,
    limits: Limits | None = None,
    emit_script: bool = False,
    workspace_mib: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Build encoder and decoder engines for ``export_dir`` into ``output`` (default EXPORT/trt).

    With ``emit_script`` only the equivalent trtexec script is written (TensorRT not needed).
    """
    limits = limits or Limits()
    info = read_manifest(export_dir)
    out = Path(output) if output else info.path / "trt"
    if info.quantization:
        raise EngineError(
            f"{info.path} is quantized for onnxruntime (MatMulNBits, a contrib op TensorRT does not parse)",
            "build engines from the fp32 or fp16 export (--dtype fp16)",
        )
    if fp16 and info.dtype != "float16":
        raise EngineError(
            f"{info.path} is a {info.dtype} export; --fp16 builds from the fp16 graph",
            "export it with: ilora-export onnx CHECKPOINT --dtype fp16 -o DIR (strongly typed "
            "networks take their precision from the graph)",
        )
    check_export(info, log=log)  # operators TensorRT's ONNX parser lacks: refused before anything is written
    profiles = engine_profiles(info, limits)
    out.mkdir(parents=True, exist_ok=True)
    rel = export_reference(info.path, out)
    commands = {
        name: trtexec_command(
            f"{rel}/{name}.onnx",
            f"{name}.plan",
            profiles[name],
            timing_cache=TIMING_CACHE,
            fp32=info.dtype == "float32",
            workspace_mib=workspace_mib,
        )
        for name in ("encoder", "decoder")
    }
    header = (
        f"Builds the TensorRT engines of {info.path} ({info.dtype}) on the target GPU, like "
        f"`ilora-export trt`.\nLimits: {json.dumps(limits.__dict__)}"
    )
    manifest_sha = sha256_file(info.path / MANIFEST)
    index = {
        "export": export_reference(info.path, out),
        "manifest_sha256": manifest_sha,
        "dtype": info.dtype,
        "limits": limits.__dict__,
        "profiles": {
            g: {p: {t: [list(s) for s in shapes] for t, shapes in prof.items()} for p, prof in ps.items()}
            for g, ps in profiles.items()
        },
    }
    if emit_script:
        with atomic_path(out / SCRIPT) as tmp:
            tmp.write_text(build_script(commands, header=header), encoding="utf-8")
        os.chmod(out / SCRIPT, 0o755)
        for name in ("encoder", "decoder"):  # what the loader checks; TensorRT's facts stay unknown here
            meta = engine_metadata(name, info.dtype, manifest_sha, limits, profiles[name])
            write_metadata(out / f"{name}.plan", meta)
        write_engines_index(out, index)
        log(f"wrote {out / SCRIPT}: run it where TensorRT's trtexec is installed")
        return out
    trt = import_tensorrt()
    facts = device_facts()
    log(
        f"TensorRT {trt.__version__} ({trt.__name__}) on {facts['gpu']} (compute capability "
        f"{facts['compute_capability']}), {info.dtype} graphs, strongly typed"
    )
    for name in ("encoder", "decoder"):
        meta = engine_metadata(
            name,
            info.dtype,
            manifest_sha,
            limits,
            profiles[name],
            tensorrt_module=trt.__name__,
            tensorrt_version=trt.__version__,
            **facts,
        )
        build_engine(
            trt,
            info.path / f"{name}.onnx",
            out / f"{name}.plan",
            profiles[name],
            timing_cache=out / TIMING_CACHE,
            meta=meta,
            fp32=info.dtype == "float32",
            workspace_mib=workspace_mib,
            log=log,
        )
    write_engines_index(out, index | {"built": True})
    return out
