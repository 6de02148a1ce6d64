"""``verify``: prove an export answers as the checkpoint it came from.

Three checks, one report: the export is the checkpoint's (source hash, base model); logits at prefill
and decode on real prompts (max |delta|, greedy-token agreement); and, given a dataset, every answer
of an evaluation set with both backends. An fp32 export must agree on every answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ilora_export.errors import ExportError, ValidationError
from ilora_export.fileio import atomic_path, sha256_file


def check_source(checkpoint_info, export_info) -> None:
    """ExportError unless the export was made from this checkpoint (same base model, same files)."""
    src = export_info.manifest["source"]
    base = checkpoint_info.config["base_model"]
    for key in ("hidden_size", "num_hidden_layers", "fingerprint"):
        if src["base_model"][key] != base[key]:
            raise ExportError(
                f"{checkpoint_info.path}: its base model differs from the one {export_info.path} was exported "
                f"with ({key}: {base[key]} vs {src['base_model'][key]})",
                "verify an export against the checkpoint it was exported from",
            )
    if sha256_file(Path(checkpoint_info.path) / "config.json") != src["checkpoint_sha256"]:
        raise ExportError(
            f"{export_info.path} was exported from another checkpoint ({src['checkpoint']}), "
            f"not {checkpoint_info.path}",
            f"export this checkpoint: ilora-export onnx {checkpoint_info.path} -o DIR",
        )


def verify_export(
    checkpoint,
    export_dir,
    *,
    data_dir=None,
    split: str = "test",
    seed: int = 0,
    eval_set=None,
    limit: int | None = None,
    batch_size: int = 8,
    threads: int | None = None,
    output=None,
    progress: bool = True,
) -> dict:
    """Compare ``export_dir`` (ORT) with ``checkpoint`` (PyTorch). Returns the report; raises
    ValidationError (after writing the report) when an fp32 export disagrees on any answer. A quantized
    export is compared the same way, but differences are reported, not failed."""
    from ilora_export.checkpoint import load_checkpoint
    from ilora_export.eval.answers import evaluate_backend
    from ilora_export.eval.compare import compare_answers
    from ilora_export.export.validate import compare_backends
    from ilora_export.runtime.load import checkpoint_assets, load_export
    from ilora_export.runtime.ort_backend import OrtBackend
    from ilora_export.runtime.torch_backend import TorchBackend

    export = load_export(export_dir)
    info = export.info
    evalset = None
    if data_dir is not None:  # the model's dataset, or refused before anything runs
        from ilora_export.data.evalset import (
            check_catalogue,
            check_history_length,
            load_or_build_eval_set,
        )
        from ilora_export.data.llara import load_dataset

        dataset = load_dataset(data_dir)
        check_catalogue(dataset.catalogue, export.assets.catalogue)
        evalset = load_or_build_eval_set(dataset, split, seed, Path(eval_set) if eval_set else None)
        check_history_length(evalset, info.manifest["model"]["state_size"], eval_set or dataset.split_path(split))
        if limit is not None:
            evalset.rows = evalset.rows[:limit]
    loaded = load_checkpoint(checkpoint)
    check_source(loaded.info, info)
    torch_backend, ort_backend = TorchBackend(loaded.model), OrtBackend(export, threads=threads)
    # a quantized export is held to agreement (reported), not to the float graph's tolerance
    quantized = info.quantization is not None
    strict = info.dtype == "float32" and not quantized
    tolerance = info.tolerance | ({name: math.inf for name in info.decoder.tolerance} if quantized else {})
    problems = []
    try:
        logits = compare_backends(
            torch_backend,
            ort_backend,
            export.assets,
            info.manifest["model"]["state_size"],
            tolerance=tolerance,
            strict_argmax=strict,
        )
    except ValidationError as err:
        logits, problems = err.report, [err.message]
    report = {
        "checkpoint": str(checkpoint),
        "export": str(export_dir),
        "dtype": info.dtype,
        "bake_experts": info.bake_experts,
        "quantization": info.quantization,
        "logits": logits,
    }

    if evalset is not None:
        ref = evaluate_backend(
            torch_backend, checkpoint_assets(loaded), evalset, batch_size=batch_size, progress=progress
        )
        got = evaluate_backend(ort_backend, export.assets, evalset, batch_size=batch_size, progress=progress)
        report["answers"] = {"split": split} | compare_answers(ref, got, ("torch", "ort"))
        if report["answers"]["differ"] and strict:
            problems.append(
                f"{len(report['answers']['differ'])} of {report['answers']['rows']} answers differ "
                "between torch and ort"
            )
    report["ok"] = not problems
    report["problems"] = problems
    if output is not None:
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if problems:
        raise ValidationError(
            "; ".join(problems),
            "see the report for the rows and deltas" + (f" ({output})" if output else " (-o REPORT.json writes it)"),
            report,
        )
    return report
