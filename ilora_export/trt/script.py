"""The ``trtexec`` commands equivalent to ``ilora-export trt`` (same profiles, same precision)."""

from __future__ import annotations

import shlex

from ilora_export.trt.profiles import shape_arg


def trtexec_command(
    onnx_path: str,
    engine_path: str,
    profiles: dict,
    *,
    timing_cache: str,
    fp32: bool,
    workspace_mib: int | None = None,
) -> list[str]:
    """One trtexec invocation. Each profile is ``--profile=N`` followed directly by its ``--minShapes``,
    ``--optShapes`` and ``--maxShapes`` (trtexec accepts several profiles in no other form); ``--noTF32``
    keeps an fp32 graph's matmuls in fp32 (TensorRT enables TF32 by default)."""
    cmd = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        "--stronglyTyped",
        f"--timingCacheFile={timing_cache}",
        "--skipInference",
    ]
    if fp32:
        cmd.append("--noTF32")
    if workspace_mib:
        cmd.append(f"--memPoolSize=workspace:{workspace_mib}M")
    for index, profile in enumerate(profiles.values()):
        cmd.append(f"--profile={index}")
        for i, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            cmd.append(flag + "=" + ",".join(f"{name}:{shape_arg(shapes[i])}" for name, shapes in profile.items()))
    return cmd


def build_script(commands: dict[str, list[str]], *, header: str) -> str:
    """A bash script running each engine's trtexec command (paths relative to the script's folder)."""
    lines = [
        "#!/usr/bin/env bash",
        *(f"# {h}" for h in header.splitlines()),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "",
    ]
    for name, cmd in commands.items():
        lines += [f"# {name}", " \\\n    ".join(shlex.quote(c) for c in cmd), ""]
    return "\n".join(lines)
