"""The onnxruntime-genai peer: run with the python of its own environment (``bench.peers.ensure_venv``);
imports nothing from ilora_export.

    python peer_genai.py SPEC.json OUT.json

SPEC: {"base_model": Hugging Face folder, "model_dir": where the model builder's export goes (built once,
rebuilt when the base model or precision differs), "precision": "fp32"|"int4", "build_only": bool;
to time: "threads", "repeats", "prompts": [[token id, ...], ...], "decode_prompt": [token id, ...],
"decode_steps": int}. The protocol of ``bench.worker``'s "ids" mode, at batch 1: each prompt's prefill
(one warm-up, then ``repeats``) and ``repeats`` greedy decodes of ``decode_steps`` single-token forward
passes after ``decode_prompt``; OUT: {"prefill_ms": {length: stats}, "decode_ms_per_token": stats,
"decode_tokens": the ``decode_steps`` + 1 greedy tokens of the first decode, "versions", "peak_rss_mb", ...}.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def versions() -> dict:
    import onnxruntime_genai as og

    out = {"onnxruntime_genai": og.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def build(base_model: Path, model_dir: Path, precision: str) -> bool:
    """The model builder's CPU export of ``base_model`` in ``model_dir``; False when already there."""
    source = {"base_model": str(base_model.resolve()), "precision": precision}
    stamp = model_dir / "built_from.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == source:
        return False
    if model_dir.exists() and not stamp.is_file() and any(model_dir.iterdir()):
        raise SystemExit(f"{model_dir} exists and was not built here (no built_from.json); refusing to replace it")
    partial = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(base_model),
            "-o",
            str(partial),
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            str(model_dir.with_name(model_dir.name + ".builder-cache")),
        ],
        check=True,
        stdout=sys.stderr,
    )
    (partial / "built_from.json").write_text(json.dumps(source), encoding="utf-8")
    shutil.rmtree(model_dir, ignore_errors=True)
    partial.rename(model_dir)
    return True


def set_threads(model_dir: Path, threads: int) -> None:
    """Intra-op threads of the model's session (genai_config.json), one inter-op thread."""
    path = model_dir / "genai_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"], opts["inter_op_num_threads"] = threads, 1
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def measure(model_dir: Path, spec: dict) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    set_threads(model_dir, spec["threads"])
    t0 = time.perf_counter()
    model = og.Model(str(model_dir))
    result = {"load_s": time.perf_counter() - t0, "prefill_ms": {}}

    def generator(max_length: int):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return og.Generator(model, params)

    def prefill_ms(ids) -> float:
        gen = generator(len(ids) + 2)
        t = time.perf_counter()
        gen.append_tokens(ids)  # the prefill: one forward pass over the prompt
        return (time.perf_counter() - t) * 1e3

    for prompt in spec["prompts"]:
        ids = np.asarray(prompt, np.int32)
        prefill_ms(ids)  # warm-up
        result["prefill_ms"][str(len(ids))] = stats([prefill_ms(ids) for _ in range(spec["repeats"])])

    past, steps = np.asarray(spec["decode_prompt"], np.int32), spec["decode_steps"]
    per_run, first_calls, tokens = [], [], None
    for _ in range(spec["repeats"]):
        gen = generator(len(past) + steps + 2)
        gen.append_tokens(past)
        t = time.perf_counter()
        gen.generate_next_token()  # picks the first token from the prefill's logits: no forward pass
        first_calls.append((time.perf_counter() - t) * 1e3)
        times = []
        for _ in range(steps):  # each: a forward pass over the last token, then the next greedy token
            t = time.perf_counter()
            gen.generate_next_token()
            times.append((time.perf_counter() - t) * 1e3)
        per_run.append(statistics.median(times))
        if tokens is None:
            tokens = [int(x) for x in gen.get_sequence(0)[len(past) :]]
    result["decode_ms_per_token"] = stats(per_run)
    result["first_decode_call_ms"] = stats(first_calls)
    result["decode_tokens"] = tokens
    return result


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> None:
    spec_file, out_file = argv or sys.argv[1:3]
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    model_dir = Path(spec["model_dir"])
    t0 = time.perf_counter()
    out = {"built": build(Path(spec["base_model"]), model_dir, spec.get("precision", "fp32"))}
    out["build_s"] = time.perf_counter() - t0
    out["versions"] = versions()
    if not spec.get("build_only"):
        out |= measure(model_dir, spec)
        out["peak_rss_mb"] = peak_rss_mb()
    Path(out_file).write_text(json.dumps(out), encoding="utf-8")


if __name__ == "__main__":
    main()
