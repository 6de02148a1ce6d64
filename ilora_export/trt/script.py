"""The ``trtexec`` commands equivalent to ``ilora-export trt`` (same profiles, same precision)."""

from __future__ import annotations

import shlex

from ilora_export.trt.profiles import shape_arg


def trtexec_command(
    onnx_path: str, engine_path: str, profiles: dict, *, timing_cache: str, workspace_mib: int | None = None
) -> list[str]:
    """One trtexec invocation: a --minShapes/--optShapes/--maxShapes group per profile, in order."""
    cmd = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        "--stronglyTyped",
        f"--timingCacheFile={timing_cache}",
        "--skipInference",
    ]
    if workspace_mib:
        cmd.append(f"--memPoolSize=workspace:{workspace_mib}M")
    for profile in profiles.values():
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


def parse_shapes(command: list[str]) -> list[dict[str, tuple]]:
    """The profiles a trtexec command line defines (for checking an emitted script)."""
    profiles: list[dict] = []
    for arg in command:
        for i, flag in enumerate(("--minShapes=", "--optShapes=", "--maxShapes=")):
            if arg.startswith(flag):
                if i == 0:
                    profiles.append({})
                for item in arg[len(flag) :].split(","):
                    name, dims = item.rsplit(":", 1)
                    shape = tuple(int(d) for d in dims.split("x"))
                    profiles[-1].setdefault(name, [None, None, None])[i] = shape
    return [{n: tuple(v) for n, v in p.items()} for p in profiles]
