"""Two exports of the same checkpoint, timed in alternation: prefill and decode of the same prompts.

    python benchmarks/graph_ab.py --a OLD_EXPORT --b NEW_EXPORT --data DIR -o benchmarks/results/NAME
        [--code-a OLD_SOURCE_TREE] [--code-b NEW_SOURCE_TREE]

What a change to the decoder graph buys, measured as a ratio B / A from one run (this host's bandwidth
varies 2x between runs, so only paired numbers mean anything). Each side runs in its own process,
loaded once, with its own ilora-export source tree (``--code-a`` / ``--code-b``, default this one), so
an export of an older format runs with the code that reads it. Each round asks A then B (B then A on
odd rounds) for the same left-padded batch of evaluation prompts, run through that code's shared
decode step (``runtime.generator.Decoding``); the greedy tokens of both must be identical. Writes
``graph_ab.json``, ``graph_ab.md`` and, with matplotlib, ``graph_ab.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ilora_export.lazy import pyplot


def time_graph(backend, assets, batch, steps: int) -> tuple[float, float, list]:
    """(prefill ms, decode ms per step, greedy tokens [B, steps + 1]) of one run."""
    from ilora_export.runtime.generator import Decoding, prompt_inputs

    inputs, _ = prompt_inputs(backend, batch, assets.token_ids)
    decoding = Decoding(backend)
    t0 = time.perf_counter()
    logits = decoding.step(inputs)
    prefill = time.perf_counter() - t0
    tokens = [logits.argmax(-1)]
    decode = 0.0
    for _ in range(steps):
        inputs = decoding.next_inputs(inputs, tokens[-1])
        t0 = time.perf_counter()
        logits = decoding.step(inputs)
        decode += time.perf_counter() - t0
        tokens.append(logits.argmax(-1))
    return prefill * 1000, decode / steps * 1000, np.stack(tokens, 1).tolist()


def serve(export_dir: str, data: str, split: str, threads: int, steps: int) -> None:
    """One side: load the export once, then for each batch size read from stdin answer one JSON line."""
    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.runtime.load import load_export
    from ilora_export.runtime.ort_backend import OrtBackend

    rows = build_eval_set(load_dataset(data), split, 0).rows
    export = load_export(export_dir)
    backend, assets = OrtBackend(export, threads=threads), export.assets
    builder = assets.prompt_builder()
    print("ready", flush=True)
    for line in sys.stdin:
        size = int(line)
        batch = builder.collate([builder.encode(x.seq, x.len_seq, x.candidates) for x in rows[:size]])
        prefill, decode, tokens = time_graph(backend, assets, batch, steps)
        answer = {"prefill_ms": prefill, "decode_ms": decode, "tokens": tokens}
        print(json.dumps(answer | {"prompt_tokens": int(batch.input_ids.shape[1])}), flush=True)


class Side:
    """A ``serve`` process over one export, with the source tree ``code`` first on its path."""

    def __init__(self, export: str, code: str | None, args):
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        if code:
            paths = [str(Path(code).resolve()), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        cmd = [sys.executable, __file__, "--serve", export, "--data", args.data, "--split", args.split]
        cmd += ["--threads", str(args.threads), "--steps", str(args.steps)]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{export}: the serving process failed to start (see its error above)")

    def run(self, size: int) -> dict:
        self.proc.stdin.write(f"{size}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("a serving process stopped (see its error above)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None) -> None:
    from ilora_export.bench.suite import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", help="the reference export (e.g. before the change)")
    ap.add_argument("--b", help="the export to compare with it")
    ap.add_argument("--code-a", default=None, help="ilora-export source tree that runs A (default: this one)")
    ap.add_argument("--code-b", default=None, help="ilora-export source tree that runs B (default: this one)")
    ap.add_argument("--label-a", default="A")
    ap.add_argument("--label-b", default="B")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=6, help="alternated runs per graph and batch size")
    ap.add_argument("--steps", type=int, default=24, help="decode steps per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.data, args.split, args.threads, args.steps)
    if not (args.a and args.b and args.output):
        ap.error("--a, --b and -o are required")

    sides = {args.label_a: Side(args.a, args.code_a, args), args.label_b: Side(args.b, args.code_b, args)}
    results = []
    for size in (int(b) for b in args.batches.split(",")):
        times = {label: {"prefill_ms": [], "decode_ms": []} for label in sides}
        tokens, prompt_tokens = {}, {}
        for r in range(args.rounds):
            for label in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                answer = sides[label].run(size)
                tokens[label], prompt_tokens[label] = answer["tokens"], answer["prompt_tokens"]
                times[label]["prefill_ms"].append(answer["prefill_ms"])
                times[label]["decode_ms"].append(answer["decode_ms"])
        a, b = ({k: statistics.median(v) for k, v in times[label].items()} for label in (args.label_a, args.label_b))
        results.append(
            {
                "batch": size,
                "prompt_tokens": prompt_tokens[args.label_a],
                "a": a,
                "b": b,
                "runs": times,
                "decode_ratio_b_over_a": b["decode_ms"] / a["decode_ms"],
                "prefill_ratio_b_over_a": b["prefill_ms"] / a["prefill_ms"],
                "tokens_identical": tokens[args.label_a] == tokens[args.label_b],
            }
        )
        print(json.dumps(results[-1] | {"runs": "..."}), flush=True)
    for side in sides.values():
        side.close()
    report = {
        "a": {"label": args.label_a, "export": args.a, "code": args.code_a or "this tree"},
        "b": {"label": args.label_b, "export": args.b, "code": args.code_b or "this tree"},
        "data": args.data,
        "split": args.split,
        "threads": args.threads,
        "rounds": args.rounds,
        "steps": args.steps,
        "machine": machine(),
        "results": results,
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph_ab.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# {args.label_b} vs {args.label_a}, in alternation "
        f"({args.rounds} runs each, medians; {args.threads} threads)",
        "",
        f"| batch | prompt tokens | prefill ms {args.label_a} / {args.label_b} | ratio | "
        f"decode ms/step {args.label_a} / {args.label_b} | ratio | tokens identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['batch']} | {r['prompt_tokens']} | {r['a']['prefill_ms']:.1f} / {r['b']['prefill_ms']:.1f} | "
            f"{r['prefill_ratio_b_over_a']:.2f} | {r['a']['decode_ms']:.1f} / {r['b']['decode_ms']:.1f} | "
            f"{r['decode_ratio_b_over_a']:.2f} | {r['tokens_identical']} |"
        )
    (out / "graph_ab.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"batch {r['batch']}" for r in results]
    x = np.arange(len(results))
    for i, (key, label) in enumerate((("a", args.label_a), ("b", args.label_b))):
        ax.bar(x + (i - 0.5) * 0.4, [r[key]["decode_ms"] for r in results], 0.4, label=label)
    ax.set_xticks(x, labels)
    ax.set_ylabel("decode ms / step (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "graph_ab.png", dpi=120)


if __name__ == "__main__":
    main()
