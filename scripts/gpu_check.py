"""GPU check: the evaluation on CUDA with every backend available, one JSON report.

    python scripts/gpu_check.py --checkpoint runs/lastfm-smollm2/ckpt --export runs/lastfm-smollm2/onnx \
        --data ../shared/ilora-ref/data/lastfm --out gpu_check.json [--fp16-export DIR] [--limit N] \
        [--batch-size N] [--work DIR]

Runs PyTorch on CUDA (the GPU reference), onnxruntime with its CUDA provider when the installed
onnxruntime has one (refused when the session starts without it, e.g. when onnxruntime-gpu cannot load
its CUDA libraries), and TensorRT when TensorRT is importable: fp32 engines built from --export into
WORK/trt-fp32 and fp16 engines from --fp16-export (when given) into WORK/trt-fp16, with --batch-size as
the engines' largest batch. WORK is --work, by default a fresh temporary folder; nothing is written into
the export folders. Each backend that cannot run is listed with the reason. The report records the
machine (platform, GPU, versions of PyTorch, CUDA, onnxruntime and TensorRT, onnxruntime's available
providers), the engine limits and, per backend, load and evaluation wall times, the providers its
onnxruntime decoder session actually runs on (onnxruntime runs), and how many answers equal the CUDA
PyTorch ones (and the CPU PyTorch ones with --cpu-reference).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--fp16-export", default=None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8, help="rows per batch, also the engines' largest batch")
    ap.add_argument("--cpu-reference", action="store_true", help="also run PyTorch on CPU")
    ap.add_argument(
        "--work", default=None, help="writable folder for the TensorRT engines (default: a fresh temporary folder)"
    )
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size must be at least 1 (got {args.batch_size})")

    import torch

    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.eval.answers import evaluate_backend
    from ilora_export.runtime.load import open_backend
    from ilora_export.trt.profiles import Limits

    limits = Limits(max_batch=args.batch_size)
    evalset = build_eval_set(load_dataset(args.data), args.split, seed=0)
    if args.limit:
        evalset.rows = evalset.rows[: args.limit]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    report = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            **_runtime_versions(),
        },
        "rows": len(evalset.rows),
        "work": str(work),
        "limits": dict(limits.__dict__),
        "runs": {},
        "skipped": {},
    }

    def run(name, opener):
        try:
            t0 = time.perf_counter()
            backend, assets = opener()
            load = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = evaluate_backend(backend, assets, evalset, batch_size=args.batch_size, progress=True)
            report["runs"][name] = {
                **({"providers": backend.providers} if hasattr(backend, "providers") else {}),
                "load_s": round(load, 2),
                "eval_s": round(time.perf_counter() - t0, 2),
                "answers": [r["answer"] for r in out.records],
                "summary": {k: out.summary[k] for k in ("valid_ratio", "hit_ratio@1_of_valid", "hit_ratio@1_of_total")},
            }
            print(f"{name}: {report['runs'][name]['eval_s']} s", flush=True)
        except Exception as err:  # noqa: BLE001 (one backend failing must not hide the others' results)
            report["skipped"][name] = f"{type(err).__name__}: {err}"
            from ilora_export.errors import IloraError

            if not isinstance(err, IloraError):  # a bug, not a missing piece: show where
                traceback.print_exc()

    if args.cpu_reference:
        run("torch-cpu", lambda: open_backend(args.checkpoint, "torch", device="cpu"))
    run("torch-cuda", lambda: open_backend(args.checkpoint, "torch", device="cuda"))
    run("ort-cuda", lambda: open_backend(args.export, "ort", device="cuda"))
    try:
        from ilora_export.trt.build import build_engines
        from ilora_export.trt.engine import import_tensorrt

        import_tensorrt()
        for label, export, fp16 in (("trt-fp32", args.export, False), ("trt-fp16", args.fp16_export, True)):
            if export:
                engines = work / label  # never inside the export folder, which may be read-only
                run(
                    label,
                    lambda e=export, d=engines, f=fp16: open_backend(build_engines(e, d, fp16=f, limits=limits), "trt"),
                )
    except Exception as err:  # noqa: BLE001
        report["skipped"]["trt"] = f"{type(err).__name__}: {err}"

    ref = report["runs"].get("torch-cuda", {}).get("answers")
    for r in report["runs"].values():
        if ref is not None:
            r["identical_to_torch_cuda"] = sum(a == b for a, b in zip(r["answers"], ref))
        cpu = report["runs"].get("torch-cpu", {}).get("answers")
        if cpu is not None:
            r["identical_to_torch_cpu"] = sum(a == b for a, b in zip(r["answers"], cpu))
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, r in report["runs"].items():
        print(
            f"{name:<10} {r['eval_s']:>7} s  identical to torch-cuda: {r.get('identical_to_torch_cuda')}"
            f"/{report['rows']}  {r['summary']}"
        )
    for name, why in report["skipped"].items():
        print(f"{name:<10} not run: {why}")


def _runtime_versions() -> dict:
    """Versions of onnxruntime (with its available providers) and TensorRT; None where not importable."""
    from ilora_export.errors import IloraError
    from ilora_export.runtime.ort_backend import import_onnxruntime
    from ilora_export.trt.engine import import_tensorrt

    out = {"onnxruntime": None, "onnxruntime_providers": None, "tensorrt": None}
    try:
        ort = import_onnxruntime()
        out["onnxruntime"], out["onnxruntime_providers"] = ort.__version__, ort.get_available_providers()
    except IloraError:
        pass
    try:
        out["tensorrt"] = import_tensorrt().__version__
    except IloraError:
        pass
    return out


if __name__ == "__main__":
    main()
