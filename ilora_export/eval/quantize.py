"""Weight-only quantization of an export's base LLM (``MatMulNBits``), behind a quality gate.

The decoder's base projections and the LM head become int8 or int4 block-quantized weights
(onnxruntime's ``MatMulNBits`` contrib op, CPU); the expert bank stays fp32 (it is a graph input,
never an initializer, so the quantizer cannot touch it), and so do the encoder, the embeddings, RMSNorm
and attention. Nothing guarantees a quantized model answers as the fp32 one does, so the quality gate
evaluates both exports on an evaluation set and reports answer agreement and the HitRatio@1 delta; below
``min_agreement`` the command warns. The result is an ordinary export folder (``eval``, ``bench``,
``verify`` take it) whose manifest records the quantization and the gate's numbers.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ilora_export.artifacts.contract import DECODER_FILE
from ilora_export.artifacts.kinds import EXPORT, of_kind
from ilora_export.artifacts.manifest import MANIFEST, read_manifest, write_manifest
from ilora_export.errors import ExportError, IloraError
from ilora_export.fileio import atomic_dir, check_replaceable, hash_tree, sha256_file
from ilora_export.lazy import require

BITS = (8, 4)
# MatMulNBits compute type: 0 = as the graph (fp32), 4 = int8 activations. On x86 CPUs only 4 has fast
# int8-weight kernels (int8 at level 0 decoded 8x slower than fp32 on the reference machine).
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def _quantizer():
    tools = require("onnxruntime.quantization.matmul_nbits_quantizer", purpose="quantizing")
    return tools.MatMulNBitsQuantizer, tools.DefaultWeightOnlyQuantConfig


def quantize_decoder(source: Path, target: Path, *, bits: int, block_size: int, accuracy_level: int) -> int:
    """Write ``source`` (a decoder graph) to ``target`` with weight-only quantized MatMuls; returns how many."""
    import onnx

    quantizer_cls, config_cls = _quantizer()
    model = onnx.load(str(source))  # with external data: the quantizer reads the weights
    config = config_cls(block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level, bits=bits)
    quantizer = quantizer_cls(
        model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level, algo_config=config
    )
    logger = logging.getLogger("onnxruntime.quantization")  # one INFO line per node otherwise
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        logger.setLevel(level)
    graph = quantizer.model.model
    count = sum(n.op_type == "MatMulNBits" for n in graph.graph.node)
    if count == 0:
        raise ExportError(
            f"{source}: no MatMul with a constant weight was found to quantize",
            "quantize an export written by `ilora-export onnx`",
        )
    onnx.save(graph, str(target), save_as_external_data=True, location=target.name + ".data", size_threshold=1024)
    return count


def _check_source(info) -> None:
    m = info.manifest
    if m.get("quantization"):
        raise IloraError(
            f"{info.path} is already quantized ({m['quantization']['bits']}-bit)",
            "quantize the fp32 export it came from",
        )
    if info.dtype != "float32":
        raise IloraError(
            f"{info.path} is a {info.dtype} export; weight-only quantization starts from fp32",
            "export with --dtype fp32 (the default) and quantize that",
        )
    if info.bake_experts and m.get("adapters", True):
        raise IloraError(
            f"{info.path} has the expert bank baked into the decoder, where it would be quantized too",
            "quantize an export with the bank as inputs (export without --bake-experts)",
        )


def quality_gate(
    reference,
    candidate,
    data_dir,
    *,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Answers and logits of ``candidate`` vs ``reference`` (two export folders), both in onnxruntime."""
    import math

    from ilora_export.data.evalset import load_or_build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.eval.answers import evaluate_backend
    from ilora_export.eval.compare import compare_answers
    from ilora_export.export.validate import compare_backends
    from ilora_export.runtime.load import load_export
    from ilora_export.runtime.ort_backend import OrtBackend

    exports = [load_export(reference), load_export(candidate)]
    ref, cand = (OrtBackend(e, threads=threads) for e in exports)
    no_limit = {name: math.inf for name in exports[1].info.tolerance}
    logits = compare_backends(
        ref,
        cand,
        exports[0].assets,
        exports[0].info.manifest["model"]["state_size"],
        tolerance=no_limit,
        strict_argmax=False,
    )
    evalset = load_or_build_eval_set(load_dataset(data_dir), split, seed, None)
    if limit is not None:
        evalset.rows = evalset.rows[:limit]
    a = evaluate_backend(ref, exports[0].assets, evalset, batch_size=batch_size, progress=progress)
    b = evaluate_backend(cand, exports[1].assets, evalset, batch_size=batch_size, progress=progress)
    return (
        {"split": split}
        | compare_answers(a, b, ("fp32", "quantized"))
        | {"logits": {k: v for k, v in logits.items() if k.endswith("_max_abs") or k == "greedy_token_agreement"}}
    )


def quantize_export(
    source,
    output,
    *,
    bits: int = 8,
    block_size: int = 32,
    accuracy_level: int = 4,
    data_dir=None,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    min_agreement: float = 0.95,
    batch_size: int = 8,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Quantize the export at ``source`` into ``output`` (written atomically); returns its manifest.

    With ``data_dir`` the quality gate runs before the folder appears; its report is in the manifest
    (``quantization.quality``) and an agreement below ``min_agreement`` is logged as a warning.
    """
    say = log or (lambda _msg: None)
    if bits not in BITS:
        raise IloraError(f"--bits {bits} is not supported", f"choose from {', '.join(map(str, BITS))}")
    if accuracy_level not in ACCURACY_LEVELS:
        raise IloraError(
            f"--accuracy-level {accuracy_level} is not one of {ACCURACY_LEVELS}",
            "0 computes in fp32, 4 with int8 activations (faster, less exact)",
        )
    if block_size < 16 or block_size & (block_size - 1):
        raise IloraError(f"--block-size {block_size} must be a power of two >= 16", "32 is a good default")
    info = read_manifest(source)
    _check_source(info)
    check_replaceable(output, of_kind(EXPORT), "an export")
    t0 = time.perf_counter()
    with atomic_dir(output, replaceable=of_kind(EXPORT), what="an export") as tmp:
        for item in info.path.iterdir():
            if item.name in (MANIFEST, DECODER_FILE, DECODER_FILE + ".data"):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        count = quantize_decoder(
            info.path / DECODER_FILE,
            tmp / DECODER_FILE,
            bits=bits,
            block_size=block_size,
            accuracy_level=accuracy_level,
        )
        say(
            f"quantized {count} MatMuls to {bits}-bit (block {block_size}, accuracy level {accuracy_level}) "
            f"in {time.perf_counter() - t0:.0f} s; the expert bank stays fp32"
        )
        manifest = dict(info.manifest)
        manifest.pop("validation", None)  # it described the fp32 graph
        manifest["quantization"] = {
            "method": "MatMulNBits",
            "bits": bits,
            "block_size": block_size,
            "symmetric": True,
            "accuracy_level": accuracy_level,
            "quantized_matmuls": count,
            "source_export": str(info.path.resolve()),
            "source_manifest_sha256": sha256_file(info.path / MANIFEST),
        }
        manifest["files"] = hash_tree(tmp, exclude=MANIFEST)
        write_manifest(tmp / MANIFEST, manifest)
        if data_dir is None:
            say("Warning: no --data given, so the quantized model's answers were not compared with the fp32 export")
        else:
            say(f"quality gate: evaluating the fp32 and the {bits}-bit export on {split}")
            quality = quality_gate(
                info.path,
                tmp,
                data_dir,
                split=split,
                seed=seed,
                limit=limit,
                batch_size=batch_size,
                threads=threads,
                progress=progress,
            )
            quality["min_agreement"] = min_agreement
            quality["passed"] = quality["agreement"] >= min_agreement
            manifest["quantization"]["quality"] = quality
            write_manifest(tmp / MANIFEST, manifest)
            say(format_quality(quality))
            if not quality["passed"]:
                say(
                    f"Warning: only {quality['agreement']:.1%} of answers agree with the fp32 export "
                    f"(threshold {min_agreement:.0%}); this quantized model does not answer as the trained one"
                )
    say(f"quantized export written to {output} in {time.perf_counter() - t0:.0f} s")
    return manifest


def format_quality(q: dict) -> str:
    f, c = q["fp32"], q["quantized"]
    return "\n".join(
        [
            f"answers identical to fp32: {q['agree']}/{q['rows']} ({q['agreement']:.1%}) on {q['split']}",
            f"  fp32       ValidRatio {f['valid_ratio']:.4f}  HitRatio@1 {f['hit_ratio@1_of_total']:.4f}",
            (
                f"  quantized  ValidRatio {c['valid_ratio']:.4f}  HitRatio@1 {c['hit_ratio@1_of_total']:.4f} "
                f"(delta {q['hit_ratio@1_delta']:+.4f})"
            ),
            (
                f"  logits max |delta| vs fp32: prefill {q['logits']['prefill_logits_max_abs']:.3g}, "
                f"decode {q['logits']['decode_logits_max_abs']:.3g}"
            ),
        ]
    )
