"""Two exports of the same checkpoint, timed in alternation: prefill and decode of the same prompts.

    python benchmarks/graph_ab.py --a OLD_EXPORT --b NEW_EXPORT --data DIR -o benchmarks/results/NAME

What a change to the decoder graph buys, measured as a ratio B / A from one run (this host's bandwidth
varies 2x between runs, so only paired numbers mean anything). Each round runs A then B (B then A on
odd rounds) on the same left-padded batch of evaluation prompts through the shared decode step
(``runtime.generator.Decoding``); the greedy tokens of both must be identical. Writes
``graph_ab.json``, ``graph_ab.md`` and, with matplotlib, ``graph_ab.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


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


def main(argv=None) -> None:
    from ilora_export.bench.suite import machine
    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.runtime.load import load_export
    from ilora_export.runtime.ort_backend import OrtBackend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the reference export (e.g. before the change)")
    ap.add_argument("--b", required=True, help="the export to compare with it")
    ap.add_argument("--label-a", default="A")
    ap.add_argument("--label-b", default="B")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=6, help="alternated runs per graph and batch size")
    ap.add_argument("--steps", type=int, default=24, help="decode steps per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)

    rows = build_eval_set(load_dataset(args.data), args.split, 0).rows
    graphs = {}
    for label, path in ((args.label_a, args.a), (args.label_b, args.b)):
        export = load_export(path)
        graphs[label] = (OrtBackend(export, threads=args.threads), export.assets)
    results = []
    for size in (int(b) for b in args.batches.split(",")):
        times = {label: {"prefill_ms": [], "decode_ms": []} for label in graphs}
        tokens = {}
        for r in range(args.rounds):
            for label in list(graphs) if r % 2 == 0 else list(graphs)[::-1]:
                backend, assets = graphs[label]
                builder = assets.prompt_builder()
                batch = builder.collate([builder.encode(x.seq, x.len_seq, x.candidates) for x in rows[:size]])
                prefill, decode, tokens[label] = time_graph(backend, assets, batch, args.steps)
                times[label]["prefill_ms"].append(prefill)
                times[label]["decode_ms"].append(decode)
        a, b = ({k: statistics.median(v) for k, v in times[label].items()} for label in (args.label_a, args.label_b))
        results.append(
            {
                "batch": size,
                "prompt_tokens": int(batch.input_ids.shape[1]),
                "a": a,
                "b": b,
                "runs": times,
                "decode_ratio_b_over_a": b["decode_ms"] / a["decode_ms"],
                "prefill_ratio_b_over_a": b["prefill_ms"] / a["prefill_ms"],
                "tokens_identical": tokens[args.label_a] == tokens[args.label_b],
            }
        )
        print(json.dumps(results[-1] | {"runs": "..."}), flush=True)
    report = {
        "a": {"label": args.label_a, "export": args.a},
        "b": {"label": args.label_b, "export": args.b},
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
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
