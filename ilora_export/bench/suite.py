"""``run_bench``: every row measured in its own process, one after the other, on the same machine.

Rows: PyTorch eager (the reference: the checkpoint through the HF forward with its DynamicCache),
ORT over the default export (expert bank as graph inputs) with the bank folded into the session and
the adapters fused at load (the default), folded only, and bound per call; ORT over an export with the
bank baked; ORT running the plain base model behind the same interface (what the expert bank costs);
and the export quantized to int8 / int4 weights (opt-in edge path, answers counted against the
reference). Opt-in, a peer on the plain base model timed back to back with our plain export
(``bench.peers``). The report says which speed targets it meets (``bench.targets``). Results: JSON, a
Markdown table and, with matplotlib installed, a PNG plot.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

from ilora_export.errors import IloraError
from ilora_export.fileio import atomic_path, sha256_file
from ilora_export.lazy import pyplot

ROWS = ("torch", "ort", "ort-folded", "ort-input", "ort-baked", "ort-plain", "ort-int8", "ort-int4")
LABELS = {
    "torch": "PyTorch eager (reference)",
    "ort": "ORT, bank folded and fused at load (default)",
    "ort-folded": "ORT, bank folded at load, not fused",
    "ort-input": "ORT, bank as inputs, bound per call",
    "ort-baked": "ORT, bank baked at export",
    "ort-plain": "ORT, plain base model (no adapter)",
    "ort-int8": "ORT, int8 weights (bank fp32), opt-in",
    "ort-int4": "ORT, int4 weights (bank fp32), opt-in",
}
QUANTIZED = {"int8": 8, "int4": 4}  # variant kind -> weight bits


def _variant(export_info, kind: str, cache: Path, log) -> Path:
    """The baked or plain export of the same checkpoint, built once and reused while the source matches."""
    from ilora_export.artifacts.manifest import read_manifest
    from ilora_export.export.package import export_checkpoint

    src = export_info.manifest["source"]
    out = cache / kind
    if kind in QUANTIZED:
        return _quantized_variant(export_info, QUANTIZED[kind], out, log)
    try:
        if read_manifest(out, verify_files=False).manifest["source"]["checkpoint_sha256"] == src["checkpoint_sha256"]:
            return out
    except IloraError:
        pass
    ckpt = Path(src["checkpoint"])
    if not ckpt.is_dir():
        raise IloraError(
            f"{kind} row: the export's source checkpoint {ckpt} is not here",
            "pass --checkpoint, or leave that row out with --rows",
        )
    log(f"exporting the {kind} variant of {ckpt} (once; cached in {out})")
    export_checkpoint(
        ckpt,
        out,
        dtype=export_info.dtype.replace("float", "fp"),
        bake_experts=kind == "baked",
        plain=kind == "plain",
        log=lambda m: log(f"  {m}"),
    )
    return out


def _quantized_variant(export_info, bits: int, out: Path, log) -> Path:
    """The export quantized to ``bits`` (no quality gate: the suite reports answers vs the reference)."""
    from ilora_export.artifacts.manifest import read_manifest
    from ilora_export.eval.quantize import quantize_export

    source_sha = sha256_file(export_info.path / "manifest.json")
    defaults = inspect.signature(quantize_export).parameters
    wanted = {
        "source_manifest_sha256": source_sha,
        "bits": bits,
        "block_size": defaults["block_size"].default,
        "accuracy_level": defaults["accuracy_level"].default,
    }
    try:
        q = read_manifest(out, verify_files=False).quantization
        if {k: q[k] for k in wanted} == wanted:
            return out
    except (IloraError, KeyError, TypeError):
        pass
    log(f"quantizing {export_info.path} to {bits}-bit (once; cached in {out})")
    quantize_export(export_info.path, out, bits=bits, log=lambda m: log(f"  {m}"))
    return out


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gb"] = round(int(mem[1]) / 1024**2, 1)
    except OSError:
        pass
    return info


def run_bench(
    export_dir,
    data_dir,
    *,
    split: str = "test",
    checkpoint=None,
    rows=ROWS,
    threads: int | None = None,
    repeats: int = 3,
    eval_repeats: int = 1,
    limit: int | None = None,
    prompt_lengths=(64, 128, 256, 512),
    decode_past: int = 280,
    decode_steps: int = 32,
    batch_sizes=(1, 8),
    peers=(),
    peer_rounds: int | None = None,
    base_model=None,
    output="benchmarks/results",
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every row; write bench.json / bench.md (/ bench.png) into ``output``; return the results.

    ``peers`` (e.g. ``("genai",)``): each peer timed back to back with the plain export over
    ``peer_rounds`` rounds (default ``max(5, repeats)``), in its own environment, created once under
    ``output/exports``; ``base_model`` is the folder the peer builds its model from (default: the
    checkpoint's base model).
    """
    from ilora_export.artifacts.manifest import read_manifest
    from ilora_export.bench import peers as peer_tools
    from ilora_export.bench.floor import decoder_floor, measure_gemm_gflops
    from ilora_export.bench.targets import check_targets, target_line
    from ilora_export.bench.worker import run_worker

    info = read_manifest(export_dir)
    threads = threads or os.cpu_count() or 1
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise IloraError(f"unknown benchmark rows {unknown}", f"choose from {', '.join(ROWS)}")
    ckpt = Path(checkpoint) if checkpoint else Path(info.manifest["source"]["checkpoint"])
    cache = output / "exports"
    targets = {
        "torch": ("torch", ckpt),
        "ort": ("ort", info.path),
        "ort-folded": ("ort", info.path),
        "ort-input": ("ort", info.path),
    }
    bank_modes = {"ort-folded": "folded", "ort-input": "input"}
    unknown = [p for p in peers if p not in peer_tools.PEERS]
    if unknown:
        raise IloraError(f"unknown peers {unknown}", f"choose from {', '.join(peer_tools.PEERS)}")
    for kind in ("baked", "plain", *QUANTIZED):
        if f"ort-{kind}" in rows or (kind == "plain" and peers):
            targets[f"ort-{kind}"] = ("ort", _variant(info, kind, cache, log))
    # the peers' environments first: a pip failure stops the run before the long measurements
    peer_envs = {name: peer_tools.peer_environment(name, cache, log) for name in peers}
    peer_base = _base_model(ckpt, base_model) if peers else None

    base = {
        "data": str(data_dir),
        "split": split,
        "limit": limit,
        "threads": threads,
        "repeats": repeats,
        "eval_repeats": eval_repeats,
        "prompt_lengths": list(prompt_lengths),
        "decode_past": decode_past,
        "decode_steps": decode_steps,
        "eval_batch_sizes": list(batch_sizes),
        "num_experts": info.shape.num_experts,
    }
    results: dict[str, dict] = {}
    for row in rows:
        backend, target = targets[row]
        log(f"[{row}] {LABELS[row]}")
        results[row] = run_worker(
            base | {"backend": backend, "target": str(target), "bank_mode": bank_modes.get(row, "fused")}, threads, row
        )
        log(
            f"  decode {results[row]['decode_ms_per_token']['median']:.1f} ms/token, eval "
            + ", ".join(f"batch {b}: {results[row]['eval'][str(b)]['rows_per_s']:.2f} rows/s" for b in batch_sizes)
        )
    adapter_cost = None
    if "ort" in results and "ort-plain" in results:
        log("[adapter cost] default export and plain model in one process, timed in alternation")
        pair = run_worker(
            base
            | {"mode": "pair", "targets": [str(info.path), str(targets["ort-plain"][1])], "rounds": max(5, repeats)},
            threads,
            "adapter cost",
        )
        d, p = pair["decode_ms_per_token"], pair["prefill_ms"]
        adapter_cost = pair | {
            "decode": d[0]["median"] / d[1]["median"] - 1,
            "prefill": p[0]["median"] / p[1]["median"] - 1,
        }
        log(f"  decode {adapter_cost['decode']:+.1%}, prefill {adapter_cost['prefill']:+.1%}")
    peer_results = {}
    for name, (python, script) in peer_envs.items():
        log(f"[peer {name}] {peer_tools.PEER_LABELS[name]} vs our plain export, back to back")
        peer_results[name] = peer_tools.pair_with_peer(
            targets["ort-plain"][1],
            python=python,
            script=script,
            base_model=peer_base,
            work=cache / f"peer-{name}",
            num_experts=info.shape.num_experts,
            threads=threads,
            rounds=peer_rounds or max(5, repeats),
            prompt_length=max(prompt_lengths),
            decode_past=decode_past,
            decode_steps=decode_steps,
            name=name,
            log=log,
        )
        d, p = peer_results[name]["decode"], peer_results[name]["prefill"]
        log(f"  median ratios (ours / peer): decode {d['median_ratio']:.2f}x, prefill {p['median_ratio']:.2f}x")

    # the bandwidth each row measured just before its timings; their median is the machine's
    bandwidth, gemm = statistics.median(r["read_bandwidth_gbs"] for r in results.values()), measure_gemm_gflops(threads)
    weight_bytes = (info.path / "decoder.onnx.data").stat().st_size
    shape, bytes_per_value = info.shape.to_dict(), 2 if info.dtype == "float16" else 4
    floor = decoder_floor(
        shape, weight_bytes, decode_past, bandwidth, gemm, list(prompt_lengths), bytes_per_value=bytes_per_value
    )
    for row, r in results.items():  # each row against the bandwidth it had and the bytes it reads
        backend, target = targets[row]
        r["weight_bytes"] = (Path(target) / "decoder.onnx.data").stat().st_size if backend == "ort" else weight_bytes
        r["decode_ms_floor"] = decoder_floor(
            shape, r["weight_bytes"], decode_past, r["read_bandwidth_gbs"], gemm, [], bytes_per_value=bytes_per_value
        )["decode_ms_floor"]
    report = {
        "machine": machine() | {"threads": threads, "read_bandwidth_gbs": bandwidth, "gemm_gflops": gemm},
        "export": str(info.path),
        "manifest_sha256": sha256_file(info.path / "manifest.json"),
        "versions": info.manifest["versions"],
        "settings": base,
        "rows": results,
        "floor": floor,
        "adapter_cost": adapter_cost,
        "peers": peer_results,
        "ratios": _ratios(results, batch_sizes),
    }
    report["targets"] = check_targets(report)
    log("[targets]")
    for entry in report["targets"]:
        log(f"  {target_line(entry)}")
    with atomic_path(output / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with atomic_path(output / "bench.md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    plot(report, output / "bench.png", log)
    return report


def _base_model(checkpoint: Path, base_model) -> Path:
    """The base-model folder of ``checkpoint`` (its recorded folder, else its reference), or ``base_model``."""
    from ilora_export.artifacts.checkpoint import read_checkpoint
    from ilora_export.base.fetch import resolve_base_model

    if base_model is not None:
        return resolve_base_model(base_model)
    recorded = read_checkpoint(checkpoint).config["base_model"]
    return Path(recorded["path"]) if Path(recorded["path"]).is_dir() else resolve_base_model(recorded["ref"])


def _ratios(results: dict, batch_sizes) -> dict:
    out = {}
    ref = results.get("torch")
    for row, r in results.items():
        o = {}
        for b in batch_sizes:
            if ref:
                o[f"eval_speedup_vs_torch_b{b}"] = r["eval"][str(b)]["rows_per_s"] / ref["eval"][str(b)]["rows_per_s"]
                o[f"answers_identical_to_torch_b{b}"] = sum(
                    x == y for x, y in zip(r["eval"][str(b)]["answers"], ref["eval"][str(b)]["answers"])
                )
        o["decode_vs_floor"] = r["decode_ms_per_token"]["median"] / r["decode_ms_floor"]
        if "ort-plain" in results and row.startswith("ort") and row != "ort-plain" and row[4:] not in QUANTIZED:
            # the plain model answers differently (other lengths), so its cost is compared per call, not per eval
            plain = results["ort-plain"]
            longest = max(r["prefill_ms"], key=int)
            o["decode_cost_vs_plain"] = r["decode_ms_per_token"]["median"] / plain["decode_ms_per_token"]["median"] - 1
            o["prefill_cost_vs_plain"] = r["prefill_ms"][longest]["median"] / plain["prefill_ms"][longest]["median"] - 1
        out[row] = o
    return out


def markdown(report: dict) -> str:
    rows, ratios, floor = report["rows"], report["ratios"], report["floor"]
    m = report["machine"]
    s = report["settings"]
    lengths = s["prompt_lengths"]
    bs = s["eval_batch_sizes"]
    lines = [
        f"Machine: {m.get('cpu', m['platform'])}, {m['cpu_count']} cores, {m.get('memory_gb', '?')} GB; "
        f"{m['threads']} threads; read bandwidth {m['read_bandwidth_gbs']:.1f} GB/s (median of the rows), "
        "fp32 GEMM "
        f"{m['gemm_gflops']:.0f} GFLOP/s. Medians of {s['repeats']} runs (eval: {s['eval_repeats']}), "
        f"min-max in brackets; one run, rows one after the other.",
        "",
    ]
    head = [
        "row",
        *[f"prefill {n} ms" for n in lengths],
        "decode ms/token",
        *[f"eval b{b} rows/s" for b in bs],
        *[f"vs torch b{b}" for b in bs],
        "answers identical to torch (" + " / ".join(f"b{b}" for b in bs) + ")",
        "peak RSS MB",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, r in rows.items():
        cells = [LABELS.get(row, row)]
        cells += [
            f"{r['prefill_ms'][str(n)]['median']:.0f} [{r['prefill_ms'][str(n)]['min']:.0f}-"
            f"{r['prefill_ms'][str(n)]['max']:.0f}]"
            for n in lengths
        ]
        d = r["decode_ms_per_token"]
        cells.append(f"{d['median']:.1f} [{d['min']:.1f}-{d['max']:.1f}]")
        cells += [f"{r['eval'][str(b)]['rows_per_s']:.2f}" for b in bs]
        cells += [f"{ratios[row].get(f'eval_speedup_vs_torch_b{b}', float('nan')):.2f}x" for b in bs]
        same = " / ".join(f"{ratios[row].get(f'answers_identical_to_torch_b{b}', '-')}" for b in bs)
        note = " (another model)" if row == "ort-plain" else ""
        cells.append(f"{same} of {r['eval'][str(bs[0])]['rows']}{note}")
        cells.append(f"{r['peak_rss_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| floor (this machine) | "
        + " | ".join(f"{floor['prefill_ms_floor'][str(n)]:.0f}" for n in lengths)
        + f" | {floor['decode_ms_floor']:.1f} |",
        "",
    ]
    cost = report.get("adapter_cost")
    if cost:
        d, p = cost["decode_ms_per_token"], cost["prefill_ms"]
        lines += [
            f"Cost of the expert bank (default export vs plain model, one process, {cost['rounds']} "
            f"alternating rounds): decode {d[0]['median']:.1f} vs {d[1]['median']:.1f} ms/token "
            f"(**{cost['decode']:+.1%}**), prefill {cost['prompt_length']} tokens {p[0]['median']:.0f} vs "
            f"{p[1]['median']:.0f} ms (**{cost['prefill']:+.1%}**).",
            "",
        ]
    for name, peer in (report.get("peers") or {}).items():
        lines += peer_markdown(name, peer)
    for row, o in ratios.items():
        extra = [
            f"decode {o['decode_vs_floor']:.2f}x the bandwidth floor "
            f"({rows[row]['read_bandwidth_gbs']:.1f} GB/s measured before the row)"
        ]
        if "decode_cost_vs_plain" in o:
            extra.append(
                f"cost of the adapter vs the plain model: decode {o['decode_cost_vs_plain']:+.1%}, "
                f"prefill ({max(lengths)} tokens) {o['prefill_cost_vs_plain']:+.1%}"
            )
        lines.append(f"- {LABELS.get(row, row)}: " + "; ".join(extra))
    if report.get("targets"):
        from ilora_export.bench.targets import targets_markdown

        lines += ["", *targets_markdown(report["targets"])]
    return "\n".join(lines) + "\n"


def peer_markdown(name: str, peer: dict) -> list[str]:
    """The paired comparison with one peer: a line per round, then the medians."""
    d, p = peer["decode"], peer["prefill"]
    lines = [
        f"Paired with {peer['peer']} on the plain base model: batch 1, {peer['threads']} threads, "
        f"{peer['rounds']} rounds, each our plain export (its own process) then {name} (its own process), "
        f"on the same random token ids: prefill of {peer['prompt_length']} tokens, decode of "
        f"{peer['decode_steps']} greedy steps after {peer['decode_past']}.",
        "",
        "| round | decode ours ms/token | decode peer ms/token | ours / peer | prefill ours ms | prefill peer ms "
        "| ours / peer | greedy tokens identical |",
        "|" + "---|" * 8,
    ]
    for k, r in enumerate(peer["per_round"], start=1):
        lines.append(
            f"| {k} | {r['ours']['decode_ms_per_token']:.2f} | {r['peer']['decode_ms_per_token']:.2f} | "
            f"{r['decode_ratio']:.2f}x | {r['ours']['prefill_ms']:.0f} | {r['peer']['prefill_ms']:.0f} | "
            f"{r['prefill_ratio']:.2f}x | {'yes' if r['tokens_identical'] else 'no'} |"
        )
    lines += [
        f"| median | {d['ours_median']:.2f} | {d['peer_median']:.2f} | **{d['median_ratio']:.2f}x** | "
        f"{p['ours_median']:.0f} | {p['peer_median']:.0f} | **{p['median_ratio']:.2f}x** | "
        f"{peer['tokens_identical_rounds']} of {peer['rounds']} |",
        "",
    ]
    return lines


def plot(report: dict, path: Path, log) -> None:
    plt = pyplot(log)
    if plt is None:
        return
    rows, bs = report["rows"], report["settings"]["eval_batch_sizes"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for row, r in rows.items():
        lengths = [int(n) for n in r["prefill_ms"]]
        ax1.plot(lengths, [r["prefill_ms"][str(n)]["median"] for n in lengths], marker="o", label=LABELS.get(row, row))
    floor = report["floor"]["prefill_ms_floor"]
    ax1.plot([int(n) for n in floor], list(floor.values()), "k--", label="GEMM floor")
    ax1.set(xlabel="prompt tokens", ylabel="prefill ms (batch 1)", title="Prefill latency")
    ax1.legend(fontsize=7)
    width = 0.8 / len(rows)
    for i, (row, r) in enumerate(rows.items()):
        ax2.bar(
            [j + i * width for j in range(len(bs))],
            [r["eval"][str(b)]["rows_per_s"] for b in bs],
            width,
            label=LABELS.get(row, row),
        )
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(bs))], [f"batch {b}" for b in bs])
    ax2.set(ylabel="rows / s", title="Full evaluation throughput")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
