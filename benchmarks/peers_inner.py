"""Runs inside the optimum peer's own virtual environment (created by peers.py): exports the plain base
model with optimum-onnx and measures prefill latency by prompt length and decode ms/token at batch 1, with
the protocol of ``ilora_export.bench.worker`` (random tokens, warm-up, medians). The onnxruntime-genai
peer is ``ilora_export/bench/peer_genai.py``.

    python peers_inner.py BASE_DIR WORK_DIR THREADS REPEATS LENGTHS DECODE_PAST DECODE_STEPS OUT.json
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def optimum_row(base, work, threads, repeats, lengths, past, steps):
    import onnxruntime as ort

    out = work / "optimum"
    if not (out / "model.onnx").is_file():
        subprocess.run(
            [
                str(Path(sys.executable).parent / "optimum-cli"),
                "export",
                "onnx",
                "--model",
                str(base),
                "--task",
                "text-generation-with-past",
                str(out),
            ],
            check=True,
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    kv = [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]
    heads, dim = kv[0].shape[1], kv[0].shape[3]
    rng = np.random.default_rng(0)

    def run(ids, mask, cache):
        feed = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in names:
            feed["position_ids"] = np.arange(mask.shape[1] - ids.shape[1], mask.shape[1], dtype=np.int64)[None]
        for i, t in enumerate(kv):
            feed[t.name] = cache[i] if cache is not None else np.zeros((1, heads, 0, dim), np.float32)
        outs = sess.run(None, feed)
        return outs[0][:, -1], outs[1:]

    return measure(run, rng, repeats, lengths, past, steps)


def measure(run, rng, repeats, lengths, past, steps):
    res = {"prefill_ms": {}}

    def prefill(n):
        ids = rng.integers(0, 49152, size=(1, n)).astype(np.int64)
        return run(ids, np.ones((1, n), np.int64), None)

    for n in lengths:
        prefill(n)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            prefill(n)
            times.append((time.perf_counter() - t) * 1e3)
        res["prefill_ms"][str(n)] = stats(times)
    per_run = []
    for _ in range(repeats):
        logits, cache = prefill(past)
        mask = np.ones((1, past), np.int64)
        times = []
        for _ in range(steps):
            tok = logits.argmax(-1)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
            t = time.perf_counter()
            logits, cache = run(tok, mask, cache)
            times.append((time.perf_counter() - t) * 1e3)
        per_run.append(statistics.median(times))
    res["decode_ms_per_token"] = stats(per_run)
    return res


def main():
    base, work, threads, repeats, lengths, past, steps, out = sys.argv[1:9]
    base, work = Path(base), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    threads, repeats, past, steps = int(threads), int(repeats), int(past), int(steps)
    lengths = [int(x) for x in lengths.split(",")]
    rows, errors = {}, {}
    common = (base, work, threads, repeats, lengths, past, steps)
    for name, fn in [("optimum-onnx", lambda: optimum_row(*common))]:
        try:
            t = time.perf_counter()
            rows[name] = fn() | {"wall_s": time.perf_counter() - t}
            print(f"{name}: decode {rows[name]['decode_ms_per_token']['median']:.2f} ms/token", flush=True)
        except Exception as err:  # noqa: BLE001 (a peer that fails is reported, not fatal)
            errors[name] = f"{type(err).__name__}: {err}"[:500]
            print(f"{name}: failed: {errors[name]}", flush=True)
    rows_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({"rows": rows, "errors": errors, "peak_rss_mb_all_peers": rows_rss}, indent=2))


if __name__ == "__main__":
    main()
