"""GPU check: the evaluation on CUDA with every backend available, one JSON report.

    python scripts/gpu_check.py --checkpoint runs/lastfm-smollm2/ckpt --export runs/lastfm-smollm2/onnx \
        --data ../shared/ilora-ref/data/lastfm --out gpu_check.json [--fp16-export DIR] [--limit N]

Runs PyTorch on CUDA (the GPU reference), onnxruntime with its CUDA provider when the installed
onnxruntime has one, and TensorRT (engines built here from the export, fp16 from --fp16-export when
given) when TensorRT is importable. Each backend that cannot run is listed with the reason. The report
gives wall times and, per backend, how many answers equal the CUDA PyTorch ones (and the CPU PyTorch
ones with --cpu-reference).
"""

from __future__ import annotations

import argparse
import json
import platform
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
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cpu-reference", action="store_true", help="also run PyTorch on CPU")
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args(argv)

    import torch

    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.eval.answers import evaluate_backend
    from ilora_export.runtime.load import open_backend

    evalset = build_eval_set(load_dataset(args.data), args.split, seed=0)
    if args.limit:
        evalset.rows = evalset.rows[: args.limit]
    report = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "rows": len(evalset.rows),
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
                run(label, lambda e=export, f=fp16: open_backend(build_engines(e, Path(e) / "trt", fp16=f), "trt"))
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


if __name__ == "__main__":
    main()
