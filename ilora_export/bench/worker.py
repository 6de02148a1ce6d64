"""One benchmark row, measured in its own process (so its peak RSS is its own).

    python -m ilora_export.bench.worker SPEC.json OUT.json

SPEC: {"backend": "torch"|"ort", "target": checkpoint or export folder, "data", "split", "limit",
"threads", "repeats", "prompt_lengths": [...], "decode_past": int, "decode_steps": int,
"eval_batch_sizes": [1, 8]}; or {"mode": "pair", "targets": [export A, export B], "rounds", ...} for
two exports timed in alternation.
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


class _Timer:
    """Prefill and decode timings of one backend, on random ordinary tokens (batch 1)."""

    def __init__(self, backend, assets, num_experts: int, seed: int = 0):
        self.backend = backend
        self.rng = np.random.default_rng(seed)
        self.vocab = len(assets.tokenizer) - len(assets.token_ids)  # ordinary tokens only
        self.gate = np.full((1, num_experts), 1.0 / num_experts, dtype=backend.dtype)

    def prefill(self, length: int):
        """A fresh decode after a prompt of ``length`` random tokens: (its Decoding, the prefill's inputs,
        the prefill's logits [1, V])."""
        from ilora_export.runtime.generator import Decoding, StepInputs

        ids = self.rng.integers(0, self.vocab, size=(1, length))
        inputs = StepInputs.prefill(self.backend.embed(ids), np.ones((1, length), np.int64), self.gate)
        decoding = Decoding(self.backend)
        return decoding, inputs, decoding.step(inputs)

    def prefill_ms(self, length: int) -> float:
        t = time.perf_counter()
        self.prefill(length)
        return (time.perf_counter() - t) * 1e3

    def decode_ms(self, past: int, steps: int) -> float:
        """Median ms per token of ``steps`` greedy steps after a prompt of ``past`` tokens."""
        decoding, inputs, logits = self.prefill(past)
        times = []
        for _ in range(steps):
            tok = logits.argmax(-1)  # [1]
            t = time.perf_counter()
            inputs = decoding.next_inputs(inputs, tok)  # the token's embedding, the grown mask, its position
            logits = decoding.step(inputs)
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)


def measure(spec: dict) -> dict:
    import torch

    from ilora_export.bench.floor import measure_bandwidth_gbs
    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.eval.answers import evaluate_backend
    from ilora_export.runtime.load import open_backend

    threads = spec["threads"]
    torch.set_num_threads(threads)
    if spec.get("mode") == "pair":
        return measure_pair(spec)
    t0 = time.perf_counter()
    backend, assets = open_backend(
        spec["target"], spec["backend"], threads=threads, bank_mode=spec.get("bank_mode", "fused")
    )
    load_s = time.perf_counter() - t0
    timer = _Timer(backend, assets, spec["num_experts"])
    # the bandwidth right before this row's timings: the host's share varies over a long run
    result = {
        "load_s": load_s,
        "read_bandwidth_gbs": measure_bandwidth_gbs(threads),
        "prefill_ms": {},
        "decode_ms_per_token": None,
        "eval": {},
    }

    for length in spec["prompt_lengths"]:
        timer.prefill(length)  # warm-up
        result["prefill_ms"][str(length)] = _stats([timer.prefill_ms(length) for _ in range(spec["repeats"])])
    result["decode_ms_per_token"] = _stats(
        [timer.decode_ms(spec["decode_past"], spec["decode_steps"]) for _ in range(spec["repeats"])]
    )

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
        result["eval"][str(bs)] = {
            "wall_s": _stats(walls),
            "rows": len(evalset.rows),
            "rows_per_s": len(evalset.rows) / statistics.median(walls),
            "answers": answers,
        }
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def measure_pair(spec: dict) -> dict:
    """Two ORT exports in one process, timed in alternation (A B A B ...): a ratio free of the slow
    drifts of a shared host. Used for the expert bank's cost against the plain model."""
    from ilora_export.runtime.load import open_backend

    timers = []
    for target in spec["targets"]:
        backend, assets = open_backend(target, "ort", threads=spec["threads"])
        timers.append(_Timer(backend, assets, spec["num_experts"]))
    longest = max(spec["prompt_lengths"])
    decode, prefill = [[] for _ in timers], [[] for _ in timers]
    for t in timers:
        t.decode_ms(spec["decode_past"], 4)  # warm-up
    for _ in range(spec["rounds"]):
        for i, t in enumerate(timers):
            decode[i].append(t.decode_ms(spec["decode_past"], spec["decode_steps"]))
            prefill[i].append(t.prefill_ms(longest))
    return {
        "targets": spec["targets"],
        "rounds": spec["rounds"],
        "prompt_length": longest,
        "decode_ms_per_token": [_stats(d) for d in decode],
        "prefill_ms": [_stats(p) for p in prefill],
    }


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
