"""Peers on the plain base model, side by side with our plain-model ORT path, in one run.

    python benchmarks/peers.py --plain-export benchmarks/results/lastfm-smollm2/exports/plain \
        --threads 2 -o benchmarks/results/lastfm-smollm2

The peers need their own environments (the optimum-onnx exporter requires transformers < 4.58, the
onnxruntime-genai 0.18 model builder transformers 5): created once with pip in
benchmarks/.peers-venv-optimum and benchmarks/.peers-venv-genai.
Rows, all at batch 1 with the same protocol
(one warm-up, medians of --repeats):
- ours: the plain base model exported by `ilora-export` (`ilora-export bench` makes it), in ORT;
- optimum-onnx `text-generation-with-past` export, run in ORT with its KV cache (its own random tokens);
- the onnxruntime-genai model builder export (fp32 and int4), run with its own generator
  (``ilora_export/bench/peer_genai.py``, the peer `ilora-export bench --peer genai` pairs with ours),
  on the same random token ids as ours.
Writes peers.json and peers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
# optimum-onnx needs transformers < 4.58 (the genai peer's environment, transformers 5, is the package's)
OPTIMUM_PACKAGES = ["torch==2.13.0", "transformers>=4.50,<4.58", "optimum-onnx==0.1.0", "onnx", "onnxruntime", "numpy"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plain-export", required=True, help="our plain-model export (ilora-export bench makes it)")
    ap.add_argument("--base-model", default=None, help="HF folder of the base model (default: the embedded one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lengths", default="64,128,256,512")
    ap.add_argument("--decode-past", type=int, default=280)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--venv", default=str(HERE / ".peers-venv"))
    ap.add_argument("-o", "--output", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    from ilora_export.base.fetch import resolve_base_model
    from ilora_export.bench.peers import (
        PEER_PACKAGES,
        PEER_SCRIPTS,
        base_vocab_size,
        draw_token_ids,
        ensure_venv,
        run_peer,
    )
    from ilora_export.bench.worker import run_worker
    from ilora_export.errors import IloraError

    base = resolve_base_model(args.base_model)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    lengths = [int(x) for x in args.lengths.split(",")]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    *prompts, past = draw_token_ids(base_vocab_size(base), [*lengths, args.decode_past])
    timing = {
        "threads": args.threads,
        "repeats": args.repeats,
        "prompts": prompts,
        "decode_prompt": past,
        "decode_steps": args.decode_steps,
    }
    work = Path(args.venv).parent / ".peers-work"

    # ours first, then the peers, one after the other on the same machine
    num_experts = json.loads((Path(args.plain_export) / "manifest.json").read_text())["adapter"]["num_experts"]
    ours = run_worker(
        timing | {"mode": "ids", "target": args.plain_export, "num_experts": num_experts}, args.threads, "ours"
    )
    peers = {"rows": {}, "errors": {}}
    python = ensure_venv(Path(f"{args.venv}-optimum"), OPTIMUM_PACKAGES)
    raw = out / "peers-raw-optimum.json"
    subprocess.run(
        [
            str(python),
            str(HERE / "peers_inner.py"),
            str(base),
            str(work),
            str(args.threads),
            str(args.repeats),
            args.lengths,
            str(args.decode_past),
            str(args.decode_steps),
            str(raw),
        ],
        check=True,
        env=env,
    )
    part = json.loads(raw.read_text())
    peers["rows"] |= part["rows"]
    peers["errors"] |= part["errors"]
    python = ensure_venv(Path(f"{args.venv}-genai"), PEER_PACKAGES["genai"])
    for precision in ("fp32", "int4"):
        name = f"ort-genai {precision}"
        spec = timing | {"base_model": str(base), "model_dir": str(work / f"genai-{precision}"), "precision": precision}
        try:  # a peer that fails is reported, not fatal
            peers["rows"][name] = run_peer(python, PEER_SCRIPTS["genai"], spec, args.threads, name)
            print(f"{name}: decode {peers['rows'][name]['decode_ms_per_token']['median']:.2f} ms/token", flush=True)
        except IloraError as err:
            peers["errors"][name] = str(err)[:500]
            print(f"{name}: failed: {peers['errors'][name]}", flush=True)
    rows = {"ours: ilora-export plain export, ORT": ours, **peers["rows"]}
    report = {
        "threads": args.threads,
        "repeats": args.repeats,
        "decode_past": args.decode_past,
        "decode_steps": args.decode_steps,
        "rows": rows,
        "errors": peers["errors"],
        "base_model": str(base),
    }
    (out / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    ref = ours["decode_ms_per_token"]["median"]
    lines = [
        f"Plain base model, batch 1, {args.threads} threads, medians of {args.repeats} (min-max), decode at "
        f"past {args.decode_past}; one run.",
        "",
        "| row | " + " | ".join(f"prefill {n} ms" for n in lengths) + " | decode ms/token | decode vs ours |",
        "|" + "---|" * (len(lengths) + 3),
    ]
    for name, r in rows.items():
        d = r["decode_ms_per_token"]
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{r['prefill_ms'][str(n)]['median']:.0f} [{r['prefill_ms'][str(n)]['min']:.0f}-"
                f"{r['prefill_ms'][str(n)]['max']:.0f}]"
                for n in lengths
            )
            + f" | {d['median']:.2f} [{d['min']:.2f}-{d['max']:.2f}] | {d['median'] / ref:.2f}x |"
        )
    for name, err in peers["errors"].items():
        lines.append(f"\n{name}: not measured ({err})")
    (out / "peers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
