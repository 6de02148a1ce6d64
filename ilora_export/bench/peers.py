"""Peers timed back to back with our plain-model export: the same token ids, the same thread count.

A peer runs in its own virtual environment (its packages would clash with ours), created once with pip
(``ensure_venv``), as a script that imports nothing from this package and speaks JSON files
(``peer_genai.py``: the onnxruntime-genai model builder and generator). ``pair_with_peer`` runs R
rounds; each round times our plain export in a ``bench.worker`` process, then the peer in its process,
and the ratios (ours / peer) of each round and their median are the result.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ilora_export.errors import IloraError

PEERS = ("genai",)
PEER_LABELS = {"genai": "onnxruntime-genai 0.18 fp32 (model builder export, its own generator)"}
PEER_SCRIPTS = {"genai": Path(__file__).with_name("peer_genai.py")}
# the onnxruntime-genai 0.18 model builder needs transformers 5 and torch to read the Hugging Face folder
PEER_PACKAGES = {
    "genai": (
        "torch==2.13.0",
        "transformers>=5,<6",
        "onnxruntime-genai==0.18.0",
        "onnx",
        "onnx-ir",
        "onnxruntime",
        "numpy",
    ),
}


def ensure_venv(venv: Path, packages, log: Callable[[str], None] = print) -> Path:
    """The python of ``venv`` with ``packages`` installed: created with pip once, then reused while
    the package list is the same (an unfinished one is made anew)."""
    venv = Path(venv)
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = "\n".join(packages)
    if python.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return python
    if venv.exists() and not (venv / "pyvenv.cfg").is_file() and any(venv.iterdir()):
        raise IloraError(
            f"{venv} exists and is not a virtual environment; refusing to replace it",
            "move it away, or choose another -o for the benchmark",
        )
    log(f"creating the peer environment {venv} (once): python -m venv, then pip install {' '.join(packages)}")
    t0 = time.perf_counter()
    venv.parent.mkdir(parents=True, exist_ok=True)
    _pip_step([sys.executable, "-m", "venv", "--clear", str(venv)], venv, "python -m venv")
    _pip_step([str(python), "-m", "pip", "install", "-q", *packages], venv, "pip install")
    stamp.write_text(wanted, encoding="utf-8")
    log(f"  ready in {time.perf_counter() - t0:.0f} s")
    return python


def peer_environment(name: str, cache: Path, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """(python, script) of peer ``name``: its environment ``cache/peer-NAME-venv`` (made once) and its script."""
    return ensure_venv(Path(cache) / f"peer-{name}-venv", PEER_PACKAGES[name], log), PEER_SCRIPTS[name]


def _pip_step(cmd: list[str], venv: Path, what: str) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise IloraError(
            f"{what} failed for the peer environment {venv}: {tail}",
            "pip needs the package registry (network, or the index set in pip's configuration); fix that and "
            "run again (an unfinished environment is made anew), or leave the peer out",
        )


def run_peer(python, script, spec: dict, threads: int, name: str) -> dict:
    """One peer process (``python script SPEC.json OUT.json``) on ``spec``; its result plus its wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["OMP_NUM_THREADS"] = str(threads)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(python), str(script), str(spec_file), str(out_file)],
            env=env,
            check=False,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out_file.is_file():
            raise IloraError(
                f"peer {name} failed: {proc.stderr.strip().splitlines()[-3:]}",
                f"run `{python} {script} SPEC.json OUT.json` by hand to see the whole error",
            )
        return json.loads(out_file.read_text(encoding="utf-8")) | {"wall_s": time.perf_counter() - t0}


def draw_token_ids(vocab: int, lengths, seed: int = 0) -> list[list[int]]:
    """One list of random token ids in [0, vocab) per length, the same for every caller with ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


def base_vocab_size(base_model: Path) -> int:
    """The base model's vocabulary (``config.json``): the ids both sides can embed."""
    return int(json.loads((Path(base_model) / "config.json").read_text(encoding="utf-8"))["vocab_size"])


def pair_with_peer(
    plain_export,
    *,
    python,
    script,
    base_model,
    work,
    num_experts: int,
    threads: int,
    rounds: int,
    prompt_length: int = 512,
    decode_past: int = 280,
    decode_steps: int = 32,
    seed: int = 0,
    name: str = "genai",
    log: Callable[[str], None] = print,
) -> dict:
    """``rounds`` rounds of our plain export (a ``bench.worker`` process) then the peer (``python script``),
    back to back, batch 1, on the same token ids and thread count: a prefill of ``prompt_length`` tokens and
    ``decode_steps`` greedy steps after ``decode_past``. The peer builds its model once first (``build``)."""
    from ilora_export.bench.worker import run_worker

    work = Path(work)
    prompt, past = draw_token_ids(base_vocab_size(base_model), (prompt_length, decode_past), seed)
    timing = {
        "threads": threads,
        "repeats": 1,
        "prompts": [prompt],
        "decode_prompt": past,
        "decode_steps": decode_steps,
    }
    peer_spec = {"base_model": str(base_model), "model_dir": str(work / "fp32"), "precision": "fp32"}
    log(f"[peer {name}] building its model from {base_model} (once; cached in {work / 'fp32'})")
    built = run_peer(python, script, peer_spec | {"build_only": True}, threads, name)
    log(f"  {'built' if built.get('built') else 'cached'}; {built.get('versions', {})}")
    per_round = []
    for k in range(rounds):
        ours = run_worker(
            timing | {"mode": "ids", "target": str(plain_export), "num_experts": num_experts}, threads, "ours (plain)"
        )
        peer = run_peer(python, script, peer_spec | timing, threads, name)
        one = {"ours": _timings(ours), "peer": _timings(peer)}
        one["tokens_identical"] = one["ours"]["decode_tokens"] == one["peer"]["decode_tokens"]
        one["decode_ratio"] = one["ours"]["decode_ms_per_token"] / one["peer"]["decode_ms_per_token"]
        one["prefill_ratio"] = one["ours"]["prefill_ms"] / one["peer"]["prefill_ms"]
        per_round.append(one)
        log(
            f"  round {k + 1}/{rounds}: decode {one['ours']['decode_ms_per_token']:.2f} vs "
            f"{one['peer']['decode_ms_per_token']:.2f} ms/token ({one['decode_ratio']:.2f}x), prefill "
            f"{prompt_length} {one['ours']['prefill_ms']:.0f} vs {one['peer']['prefill_ms']:.0f} ms "
            f"({one['prefill_ratio']:.2f}x)"
        )
    return {
        "peer": PEER_LABELS.get(name, name),
        "ours": str(plain_export),
        "base_model": str(base_model),
        "versions": built.get("versions", {}),
        "threads": threads,
        "rounds": rounds,
        "prompt_length": prompt_length,
        "decode_past": decode_past,
        "decode_steps": decode_steps,
        "seed": seed,
        "per_round": per_round,
        "tokens_identical_rounds": sum(r["tokens_identical"] for r in per_round),
        "decode": _summary(per_round, "decode_ms_per_token", "decode_ratio"),
        "prefill": _summary(per_round, "prefill_ms", "prefill_ratio"),
    }


def _timings(result: dict) -> dict:
    """A side's single measurement of a round: prefill ms (its one prompt), decode ms/token, the greedy
    tokens of the decode, peak RSS."""
    (prefill,) = result["prefill_ms"].values()
    return {
        "prefill_ms": prefill["median"],
        "decode_ms_per_token": result["decode_ms_per_token"]["median"],
        "decode_tokens": result["decode_tokens"],
        "peak_rss_mb": result.get("peak_rss_mb"),
    }


def _summary(per_round: list[dict], key: str, ratio: str) -> dict:
    return {
        "ours_median": statistics.median(r["ours"][key] for r in per_round),
        "peer_median": statistics.median(r["peer"][key] for r in per_round),
        "ratios": [r[ratio] for r in per_round],
        "median_ratio": statistics.median(r[ratio] for r in per_round),
    }
