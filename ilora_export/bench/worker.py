"""One benchmark row, measured in its own process (so its peak RSS is its own).

    python -m ilora_export.bench.worker SPEC.json OUT.json

SPEC: {"backend": "torch"|"ort", "target": checkpoint or export folder, "data", "split", "limit",
"threads", "repeats", "prompt_lengths": [...], "decode_past": int, "decode_steps": int,
"eval_batch_sizes": [1, 8]}.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import numpy as np


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(spec: dict) -> dict:
    import torch

    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.eval.reference import evaluate_backend, open_backend
    from ilora_export.runtime.generator import positions_from_mask

    threads = spec["threads"]
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    backend, assets = open_backend(spec["target"], spec["backend"], threads=threads,
                                   bank_mode=spec.get("bank_mode", "session"))
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    vocab = len(assets.tokenizer) - len(assets.token_ids)  # ordinary tokens only
    gate = np.full((1, spec["num_experts"]), 1.0 / spec["num_experts"], dtype=backend.dtype)
    result = {"load_s": load_s, "prefill_ms": {}, "decode_ms_per_token": None, "eval": {}}

    def prefill(length):
        ids = rng.integers(0, vocab, size=(1, length))
        mask = np.ones((1, length), np.int64)
        return backend.step(backend.embed(ids), mask, positions_from_mask(mask), gate, None)

    for length in spec["prompt_lengths"]:
        prefill(length)  # warm-up
        times = []
        for _ in range(spec["repeats"]):
            t = time.perf_counter()
            prefill(length)
            times.append((time.perf_counter() - t) * 1e3)
        result["prefill_ms"][str(length)] = _stats(times)

    per_run = []
    for _ in range(spec["repeats"]):
        past = spec["decode_past"]
        logits, state = prefill(past)
        mask = np.ones((1, past), np.int64)
        steps = []
        for _ in range(spec["decode_steps"]):
            tok = logits.argmax(-1)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
            pos = np.array([[mask.shape[1] - 1]], np.int64)
            t = time.perf_counter()
            logits, state = backend.step(backend.embed(tok), mask, pos, gate, state)
            steps.append((time.perf_counter() - t) * 1e3)
        per_run.append(statistics.median(steps))
    result["decode_ms_per_token"] = _stats(per_run)

    evalset = build_eval_set(load_dataset(spec["data"]), spec["split"], seed=0)
    if spec.get("limit"):
        evalset.rows = evalset.rows[: spec["limit"]]
    for bs in spec["eval_batch_sizes"]:
        walls, answers = [], None
        for _ in range(spec["eval_repeats"]):
            t = time.perf_counter()
            out = evaluate_backend(backend, assets, evalset, batch_size=bs, progress=False)
            walls.append(time.perf_counter() - t)
            answers = [r["answer"] for r in out.records]
        result["eval"][str(bs)] = {"wall_s": _stats(walls), "rows": len(evalset.rows),
                                   "rows_per_s": len(evalset.rows) / statistics.median(walls), "answers": answers}
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child inherits)."""
    try:
        from pathlib import Path

        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    argv = argv or sys.argv[1:]
    from pathlib import Path

    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    Path(argv[1]).write_text(json.dumps(measure(spec)), encoding="utf-8")


if __name__ == "__main__":
    main()
