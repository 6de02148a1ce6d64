"""Throughput of the sharded evaluation: one process vs Ray Data with 1, 2, ... workers, one run.

    python benchmarks/ray_scaling.py --export runs/lastfm-smollm2/onnx \\
        --data ../shared/ilora-ref/data/lastfm --split train --limit 480 \\
        -o benchmarks/results/lastfm-smollm2

The Ray configurations are WORKERS x THREADS per worker: at a fixed thread count per worker, adding
workers shows how the evaluation scales with machines' cores. Every configuration evaluates the same rows
into a fresh folder (no resumed shards) and must give the same predictions.csv as the single-process
run. Reported per configuration: wall time (Ray start-up and model loads included), rows/s, the
evaluation's own rate (rows / the busiest worker's shard time, what a long run converges to) and the
model load time per worker. Writes ray_scaling.json and ray_scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def shard_seconds(out: Path) -> dict[str, float]:
    """Seconds of shard work per worker, from the shard files' metadata."""
    import pyarrow.parquet as pq

    busy: dict[str, float] = defaultdict(float)
    for f in sorted((out / "shards").glob("shard-*.parquet")):
        meta = json.loads(pq.read_schema(f).metadata[b"ilora_export.shard"])
        busy[meta["worker"] or "main"] += meta["seconds"]
    return dict(busy)


def main() -> None:
    from ilora_export.bench.suite import machine
    from ilora_export.eval.request import EvalRequest
    from ilora_export.eval.run import run_eval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--limit", type=int, default=480)
    ap.add_argument("--shard-rows", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--configs", default="1x2,1x1,2x1", help="Ray configurations to measure, WORKERSxTHREADS each")
    ap.add_argument("-o", "--output", default="benchmarks/results")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    configs = [("single process", False, None, cpus)]
    for c in args.configs.split(","):
        n, t = map(int, c.split("x"))
        configs.append((f"ray, {n} worker{'s' if n > 1 else ''} x {t} thread{'s' if t > 1 else ''}", True, n, t))
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, use_ray, workers, threads) in enumerate(configs):
            out = Path(tmp) / str(i)
            t0 = time.perf_counter()
            request = EvalRequest(
                args.export,
                args.data,
                args.split,
                backend="ort",
                limit=args.limit,
                output=out,
                shard_rows=args.shard_rows,
                batch_size=args.batch_size,
                threads=threads,
                ray=use_ray,
                num_workers=workers,
            )
            summary = run_eval(request, progress=False)
            wall = time.perf_counter() - t0
            busy = shard_seconds(out)
            predictions = (out / "predictions.csv").read_bytes()
            reference = reference or predictions
            rows.append(
                {
                    "config": name,
                    "workers": workers or 1,
                    "threads_per_worker": threads,
                    "rows": summary["rows"],
                    "wall_s": wall,
                    "rows_per_s": summary["rows"] / wall,
                    "eval_rows_per_s": summary["rows"] / max(busy.values()),
                    "workers_used": len(busy),
                    "model_load_s": summary.get("ray_model_load_s"),
                    "identical_to_single_process": predictions == reference,
                }
            )
            print(
                f"{name}: {wall:.1f} s, {rows[-1]['rows_per_s']:.2f} rows/s "
                f"(evaluation alone {rows[-1]['eval_rows_per_s']:.2f}), "
                f"identical {rows[-1]['identical_to_single_process']}",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
    base = rows[0]
    for r in rows:
        r["speedup_vs_single"] = r["rows_per_s"] / base["rows_per_s"]
    import ray

    report = {
        "machine": machine(),
        "export": args.export,
        "split": args.split,
        "limit": args.limit,
        "shard_rows": args.shard_rows,
        "batch_size": args.batch_size,
        "ray": ray.__version__,
        "rows": rows,
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "ray_scaling.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    m = report["machine"]
    lines = [
        f"Machine: {m.get('cpu', m['platform'])}, {m['cpu_count']} cores. {base['rows']} rows of "
        f"{args.split}, shards of {args.shard_rows}, batch {args.batch_size}, Ray {ray.__version__}; "
        "one run, configurations one after the other.",
        "",
        "| configuration | workers x threads | wall s | rows/s | vs single | evaluation rows/s | "
        "model load per worker s | answers identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = f"{r['model_load_s']:.1f}" if r["model_load_s"] else ""
        lines.append(
            f"| {r['config']} | {r['workers']} x {r['threads_per_worker']} | {r['wall_s']:.1f} | "
            f"{r['rows_per_s']:.2f} | {r['speedup_vs_single']:.2f}x | {r['eval_rows_per_s']:.2f} | {load} | "
            f"{'yes' if r['identical_to_single_process'] else 'NO'} |"
        )
    (output / "ray_scaling.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
