"""The main job in one call: fetch -> fine-tune -> export -> evaluate with torch and ORT -> summary.

Everything is resumable: the base model and demo data are cached, a finished fine-tune is reused,
an existing valid export is reused, so running the command again after an interruption goes on.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

from ilora_export.fileio import atomic_path, sha256_file


def run_quickstart(
    recipe,
    *,
    limit: int | None = 100,
    threads: int | None = None,
    demo_data: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the pipeline for a loaded Recipe; returns the summary (also written to OUTPUT_DIR/quickstart.json)."""
    from ilora_export.artifacts.manifest import read_manifest
    from ilora_export.base.fetch import resolve_base_model
    from ilora_export.errors import IloraError
    from ilora_export.eval.request import EvalRequest
    from ilora_export.eval.run import run_eval
    from ilora_export.export.package import export_checkpoint
    from ilora_export.train.finetune import finetune

    out = Path(recipe.output_dir)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    log("[1/5] base model")
    resolve_base_model(recipe.base_model)
    data = Path(recipe.data.root)
    if not data.exists() and demo_data and data.name == "ml100k":
        from ilora_export.data.ml100k import build_ml100k_demo

        log(f"      building the MovieLens-100K demo dataset in {data}")
        build_ml100k_demo(data)
    stages["fetch"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"[2/5] fine-tune ({recipe.train.max_steps} steps) -> {out / 'ckpt'}")
    result = finetune(recipe)
    stages["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    export = out / "onnx"
    try:
        source = read_manifest(export).manifest["source"]["checkpoint_sha256"]
        reuse = source == sha256_file(Path(result.checkpoint) / "config.json")
    except IloraError:
        reuse = False
    log(f"[3/5] export to ONNX -> {export}" + (" (up to date, reused)" if reuse else ""))
    if not reuse:
        export_checkpoint(result.checkpoint, export, log=lambda m: log(f"      {m}"))
    stages["export"] = time.perf_counter() - t

    reused = ["export"] if reuse else []  # stages that did no new work: their seconds are not their cost
    summaries = {}
    for i, (backend, target) in enumerate((("torch", result.checkpoint), ("ort", export)), start=4):
        t = time.perf_counter()
        rows = f" (first {limit} rows)" if limit else ""
        log(f"[{i}/5] evaluate with {backend} on {recipe.data.eval_split}{rows}")
        summaries[backend] = run_eval(
            EvalRequest(
                target,
                data,
                recipe.data.eval_split,
                backend=backend,
                limit=limit,
                threads=threads,
                output=out / f"eval-{backend}",
                replace_other=True,
            )
        )
        stages[f"eval_{backend}"] = time.perf_counter() - t
        if summaries[backend]["shards_resumed"] == summaries[backend]["shards"]:
            reused.append(f"eval_{backend}")  # every answer read back from an earlier run
    answers = {}
    for b in summaries:
        with open(out / f"eval-{b}" / "predictions.csv", encoding="utf-8", newline="") as f:
            answers[b] = [row["answer"] for row in csv.DictReader(f)]
    same = sum(a == b for a, b in zip(answers["torch"], answers["ort"]))
    summary = {
        "output_dir": str(out),
        "checkpoint": str(result.checkpoint),
        "export": str(export),
        "split": recipe.data.eval_split,
        "rows": summaries["torch"]["rows"],
        "identical_rows": same,
        "stages_seconds": {k: round(v, 1) for k, v in stages.items()},
        "reused": reused,
        "backends": {
            b: {
                k: s[k]
                for k in (
                    "valid_ratio",
                    "hit_ratio@1_of_valid",
                    "hit_ratio@1_of_total",
                    "sasrec_hit_ratio@1",
                    "wall_seconds",
                )
            }
            for b, s in summaries.items()
        },
    }
    with atomic_path(out / "quickstart.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def format_table(summary: dict) -> str:
    """The summary as the table `ilora-export quickstart` prints: identical answers, metrics per backend, stages."""
    head = (
        f"{summary['split']} rows: {summary['rows']}; answers identical torch vs ort: "
        f"{summary['identical_rows']}/{summary['rows']}"
    )
    rows = [
        head,
        "",
        "| backend | ValidRatio | HitRatio@1 (valid) | HitRatio@1 (total) | SASRec HitRatio@1 | eval s |",
        "|---|---|---|---|---|---|",
    ]
    reused = set(summary.get("reused", ()))
    for name, s in summary["backends"].items():
        resumed = " (resumed)" if f"eval_{name}" in reused else ""
        rows.append(
            f"| {name} | {s['valid_ratio']:.4f} | {s['hit_ratio@1_of_valid']:.4f} | "
            f"{s['hit_ratio@1_of_total']:.4f} | {s['sasrec_hit_ratio@1']:.4f} | {s['wall_seconds']:.1f}{resumed} |"
        )
    stages = ", ".join(
        f"{k} {v:.0f} s" + (" (reused)" if k in reused else "") for k, v in summary["stages_seconds"].items()
    )
    return "\n".join(rows + ["", f"stages: {stages}"])
