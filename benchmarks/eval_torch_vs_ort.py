"""Full evaluation, PyTorch eager vs onnxruntime, side by side in one run with the same threads.

    python benchmarks/eval_torch_vs_ort.py --checkpoint runs/lastfm-smollm2/ckpt \
        --export runs/lastfm-smollm2/onnx --data ../shared/ilora-ref/data/lastfm --threads 2

Times the whole evaluation of a split (prompt assembly, prefill, greedy decode, SASRec baseline) per
backend, repeated, alternating backends; reports medians with min/max, the ORT/torch speed ratio and
the per-row answer agreement. Writes results/eval_torch_vs_ort.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ilora_export.checkpoint import load_checkpoint
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.eval.answers import evaluate_backend
from ilora_export.runtime.load import checkpoint_assets, load_export
from ilora_export.runtime.ort_backend import OrtBackend
from ilora_export.runtime.torch_backend import TorchBackend


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    evalset = build_eval_set(load_dataset(args.data), args.split, seed=0)
    if args.limit:
        evalset.rows = evalset.rows[: args.limit]
    loaded = load_checkpoint(args.checkpoint)
    export = load_export(args.export)
    runners = {
        "torch eager": (TorchBackend(loaded.model), checkpoint_assets(loaded)),
        f"onnxruntime ({export.info.dtype})": (OrtBackend(export, threads=args.threads), export.assets),
    }
    walls = {name: [] for name in runners}
    answers = {}
    for rep in range(args.repeats):
        for name, (backend, assets) in runners.items():
            t0 = time.perf_counter()
            out = evaluate_backend(backend, assets, evalset, batch_size=args.batch_size, progress=False)
            walls[name].append(time.perf_counter() - t0)
            answers[name] = [r["answer"] for r in out.records]
            print(f"repeat {rep + 1}/{args.repeats}  {name:<24} {walls[name][-1]:7.1f} s", flush=True)
    ref_name, ort_name = list(runners)
    agree = sum(a == b for a, b in zip(answers[ref_name], answers[ort_name]))
    rows = len(evalset.rows)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": __import__("os").cpu_count(),
            "threads": args.threads,
        },
        "versions": export.info.manifest["versions"] | {"torch_runtime": torch.__version__},
        "split": args.split,
        "rows": rows,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "backends": {
            name: {
                "median_s": statistics.median(w),
                "min_s": min(w),
                "max_s": max(w),
                "rows_per_s": rows / statistics.median(w),
            }
            for name, w in walls.items()
        },
        "speedup_ort_vs_torch": statistics.median(walls[ref_name]) / statistics.median(walls[ort_name]),
        "answers_identical": agree,
        "answers_total": rows,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_torch_vs_ort.json").write_text(json.dumps(result, indent=2) + "\n")
    title = (
        f"Full evaluation of {args.split} ({rows} rows, batch {args.batch_size}, {args.threads} threads, "
        f"median of {args.repeats}), one run, same machine:"
    )
    lines = [title, "", "| backend | median s | min s | max s | rows/s | vs torch |", "|---|---|---|---|---|---|"]
    for name, b in result["backends"].items():
        ratio = statistics.median(walls[ref_name]) / b["median_s"]
        lines.append(
            f"| {name} | {b['median_s']:.1f} | {b['min_s']:.1f} | {b['max_s']:.1f} | "
            f"{b['rows_per_s']:.2f} | {ratio:.2f}x |"
        )
    lines += ["", f"Answers identical: {agree}/{rows}.", ""]
    (out_dir / "eval_torch_vs_ort.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
