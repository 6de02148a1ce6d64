"""One benchmark row, measured in its own process (so its peak RSS is its own).

    python -m ilora_export.bench.worker SPEC.json OUT.json

SPEC: {"backend": "torch"|"ort", "target": checkpoint or export folder, "data", "split", "limit",
"threads", "repeats", "prompt_lengths": [...], "decode_past": int, "decode_steps": int,
"eval_batch_sizes": [1, 8]}; or {"mode": "pair", "targets": [export A, export B], "rounds", ...} for
two exports timed in alternation; or {"mode": "ids", "target": export folder, "threads", "num_experts",
"repeats", "prompts": [[token id, ...], ...], "decode_prompt": [token id, ...], "decode_steps": int}
for given token ids (the protocol a peer process speaks too, see ``bench.peer_genai``).

``run_worker`` (the parent's side) starts one such process and reads its answer.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ilora_export.errors import IloraError


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
        return self.prefill_ids(self.rng.integers(0, self.vocab, size=(1, length)))

    def prefill_ids(self, ids: np.ndarray):
        """A fresh decode after the prompt ``ids`` [1, S]: as ``prefill``."""
        from ilora_export.runtime.generator import Decoding, StepInputs

        inputs = StepInputs.prefill(self.backend.embed(ids), np.ones(ids.shape, np.int64), self.gate)
        decoding = Decoding(self.backend)
        return decoding, inputs, decoding.step(inputs)

    def prefill_ms(self, length: int) -> float:
        t = time.perf_counter()
        self.prefill(length)
        return (time.perf_counter() - t) * 1e3

    def prefill_ids_ms(self, ids: np.ndarray) -> float:
        t = time.perf_counter()
        self.prefill_ids(ids)
        return (time.perf_counter() - t) * 1e3

    def decode_ms(self, past: int, steps: int) -> float:
        """Median ms per token of ``steps`` greedy steps after a prompt of ``past`` random tokens."""
        return self.decode_ids(self.rng.integers(0, self.vocab, size=(1, past)), steps)[0]

    def decode_ids(self, ids: np.ndarray, steps: int) -> tuple[float, list[int]]:
        """``steps`` greedy steps after the prompt ``ids`` [1, P]: (median ms per step, the ``steps`` + 1
        tokens chosen: the prefill's and each step's)."""
        decoding, inputs, logits = self.prefill_ids(ids)
        times, tokens = [], []
        for _ in range(steps):
            tok = logits.argmax(-1)  # [1]
            tokens.append(int(tok[0]))
            t = time.perf_counter()
            inputs = decoding.next_inputs(inputs, tok)  # the token's embedding at the next cache column
            logits = decoding.step(inputs)
            times.append((time.perf_counter() - t) * 1e3)
        tokens.append(int(logits.argmax(-1)[0]))
        return statistics.median(times), tokens


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
    if spec.get("mode") == "ids":
        return measure_ids(spec)
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


def measure_ids(spec: dict) -> dict:
    """One ORT export timed on the given token ids at batch 1: each prompt's prefill (one warm-up, then
    ``repeats``) and ``repeats`` greedy decodes after ``decode_prompt``; the greedy tokens of the first."""
    from ilora_export.runtime.load import open_backend

    t0 = time.perf_counter()
    backend, assets = open_backend(spec["target"], "ort", threads=spec["threads"])
    load_s = time.perf_counter() - t0
    timer = _Timer(backend, assets, spec["num_experts"])
    result = {"load_s": load_s, "prefill_ms": {}}
    for prompt in spec["prompts"]:
        ids = np.asarray(prompt, np.int64)[None]  # [1, S]
        timer.prefill_ids(ids)  # warm-up
        result["prefill_ms"][str(ids.shape[1])] = _stats([timer.prefill_ids_ms(ids) for _ in range(spec["repeats"])])
    past = np.asarray(spec["decode_prompt"], np.int64)[None]  # [1, P]
    runs = [timer.decode_ids(past, spec["decode_steps"]) for _ in range(spec["repeats"])]
    result["decode_ms_per_token"] = _stats([ms for ms, _ in runs])
    result["decode_tokens"] = runs[0][1]
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_worker(spec: dict, threads: int, name: str) -> dict:
    """One worker process (this module) on ``spec``; its result plus its wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        env = os.environ | {"OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "ilora_export.bench.worker", str(spec_file), str(out_file)],
            env=env,
            check=False,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise IloraError(
                f"benchmark row {name} failed: {proc.stderr.strip().splitlines()[-1:]}",
                "run `python -m ilora_export.bench.worker` by hand to see the whole error",
            )
        return json.loads(out_file.read_text()) | {"wall_s": time.perf_counter() - t0}


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child inherits)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    argv = argv or sys.argv[1:]
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    Path(argv[1]).write_text(json.dumps(measure(spec)), encoding="utf-8")


if __name__ == "__main__":
    main()
