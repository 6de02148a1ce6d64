"""A CPU learning curve with the official iLoRA schedule: HitRatio@1 against optimizer steps.

    python benchmarks/learning_curve.py --data ../shared/ilora-ref/data/lastfm \
        --rec-model ../shared/ilora-ref/rec_model/lastfm.pt --steps 200 --every 25 --threads 2

Fine-tunes SmolLM2-135M-Instruct (the embedded default LLM) from ``recipes/lastfm-smollm2.yaml`` with
``train.schedule=official`` (Adam, the gate at 0.3x lr, weight decay 1e-5 on projector and gate,
warm-up from 7e-6 over max_steps / 20, cosine to lr / 100, no clipping, the text-only curriculum, pair
labels), lr 7e-4 as the official LastFM script, and an effective batch sized for a CPU. At step 0 and
every ``--every`` steps the checkpoint is evaluated with PyTorch on the valid and test rows together
(greedy, 20 candidates). Chance is 1/20; the SASRec-only line is SASRec's own pick among the same
candidates. Writes ``results/learning_curve.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ilora_export.checkpoint import load_checkpoint
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.eval.answers import evaluate_model
from ilora_export.lazy import pyplot
from ilora_export.train.finetune import finetune
from ilora_export.train.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rec-model", required=True, help="the official pretrained SASRec of the dataset")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N valid+test rows")
    ap.add_argument("--work", default=str(ROOT / "runs" / "learning-curve"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    overrides = [
        f"output_dir={args.work}",
        f"data.root={args.data}",
        "data.max_train_rows=null",
        f"sasrec.pretrained={args.rec_model}",
        "train.schedule=official",
        f"train.lr={args.lr}",
        "train.weight_decay=1.0e-5",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.grad_accum={args.grad_accum}",
        f"train.save_every={args.every}",
        "train.eval_rows=0",
    ]
    recipe = load_recipe(ROOT / "recipes" / "lastfm-smollm2.yaml", overrides)
    dataset = load_dataset(args.data)
    evalsets = [build_eval_set(dataset, split, seed=0) for split in ("valid", "test")]
    rows = [(s.split, r) for s in evalsets for r in s.rows]
    if args.limit:
        rows = rows[: args.limit]
    points, t_start = [], time.perf_counter()

    def evaluate(step: int, ckpt: Path) -> None:
        t0 = time.perf_counter()
        loaded = load_checkpoint(ckpt)
        hits = valid = sasrec = total = 0
        for s in evalsets:
            part = [r for split, r in rows if split == s.split]
            if not part:
                continue
            s.rows = part
            out = evaluate_model(loaded, s, batch_size=args.eval_batch_size, progress=False)
            hits += sum(bool(r["correct"]) for r in out.records)
            valid += sum(bool(r["valid"]) for r in out.records)
            sasrec += sum(r["sasrec_pick"] == r["target_id"] for r in out.records)
            total += len(out.records)
        point = {
            "step": step,
            "hit_ratio@1": hits / total,
            "valid_ratio": valid / total,
            "hit_ratio@1_of_valid": hits / valid if valid else 0.0,
            "sasrec_hit_ratio@1": sasrec / total,
            "rows": total,
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "elapsed_seconds": round(time.perf_counter() - t_start, 1),
        }
        points.append(point)
        print(json.dumps(point), flush=True)
        write(args, recipe, points, done=False)

    result = finetune(recipe, resume=False, progress=False, on_checkpoint=evaluate)
    write(args, recipe, points, done=True, train_seconds=result.wall_seconds)


def write(args, recipe, points, *, done: bool, train_seconds: float | None = None) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tc = recipe.train
    chance = 1 / 20
    report = {
        "what": "HitRatio@1 (of all rows) on LastFM valid+test against optimizer steps, official schedule, CPU",
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "train": {
            "schedule": tc.schedule,
            "lr": tc.lr,
            "weight_decay": tc.weight_decay,
            "max_steps": tc.max_steps,
            "batch_size": tc.batch_size,
            "grad_accum": tc.grad_accum,
            "effective_batch": tc.batch_size * tc.grad_accum,
            "examples_seen": tc.max_steps * tc.batch_size * tc.grad_accum,
            "base_model": recipe.base_model,
        },
        "chance": chance,
        "points": points,
        "finished": done,
        "wall_seconds": train_seconds,
    }
    (out / "learning_curve.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Learning curve: official schedule on a CPU (LastFM, SmolLM2-135M)",
        "",
        f"`python benchmarks/learning_curve.py` ({'finished' if done else 'in progress'}): effective batch "
        f"{tc.batch_size * tc.grad_accum} ({tc.batch_size} x {tc.grad_accum}), lr {tc.lr}, {tc.max_steps} steps, "
        f"evaluated on {points[0]['rows'] if points else '?'} valid+test rows. Chance = {chance:.3f}.",
        "",
        "| step | HitRatio@1 | ValidRatio | HitRatio@1 of valid | SASRec HitRatio@1 | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['step']} | {p['hit_ratio@1']:.4f} | {p['valid_ratio']:.4f} | {p['hit_ratio@1_of_valid']:.4f} "
            f"| {p['sasrec_hit_ratio@1']:.4f} | {p['elapsed_seconds'] / 60:.1f} |"
        )
    (out / "learning_curve.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plt = pyplot(lambda _msg: None)
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [p["step"] for p in points]
    ax.plot(steps, [p["hit_ratio@1"] for p in points], "o-", label="iLoRA HitRatio@1")
    ax.plot(steps, [p["valid_ratio"] for p in points], "s--", alpha=0.6, label="ValidRatio")
    if points:
        ax.axhline(points[0]["sasrec_hit_ratio@1"], color="green", ls=":", label="SASRec only")
    ax.axhline(chance, color="gray", ls="--", label="chance 1/20")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ratio")
    ax.set_title("LastFM valid+test, official schedule, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
