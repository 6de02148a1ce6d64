"""The reference (PyTorch) evaluation: greedy answers on a materialized evaluation set.

Every other backend is checked against what this produces, answer for answer.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ilora_export.data.evalset import EvalSet
from ilora_export.errors import DataError, IloraError
from ilora_export.eval.metrics import judge, summarize
from ilora_export.fileio import atomic_path
from ilora_export.model.generate import MAX_NEW_TOKENS
from ilora_export.runtime.generator import greedy_generate

PREDICTIONS = "predictions.csv"
SUMMARY = "summary.json"
EVALSET = "evalset.jsonl"


@dataclass
class EvalOutput:
    records: list[dict]  # one per row, in eval-set order
    summary: dict


def evaluate_backend(backend, assets, evalset: EvalSet, *, batch_size: int = 8, progress: bool = True,
                     templates=None, max_new_tokens: int = MAX_NEW_TOKENS) -> EvalOutput:
    """Greedy answers and metrics for every row of ``evalset`` with any runtime backend.

    ``assets`` (a PromptAssets) supplies the tokenizer, catalogue, templates and token ids.
    """
    catalogue = assets.catalogue
    for row in evalset.rows:  # a silent wrong title is never shown: ids must exist in the model's catalogue
        catalogue.check_ids([*row.seq[:row.len_seq], row.target, *row.candidates],
                            f"evaluation set ({evalset.split}), row {row.row_id}")
    encoder = assets.encoder(templates)
    stop = assets.stop_rule()
    examples = [encoder.encode(r.seq, r.len_seq, r.candidates) for r in evalset.rows]
    # Length bucketing: rows of similar prompt length share a batch (answers do not depend on it).
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    answers: dict[int, str] = {}
    sasrec_pick: dict[int, int] = {}
    bar = tqdm(total=len(examples), desc=f"eval ({backend.name})", unit="row", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encoder.collate([examples[i] for i in idx])
        gen = greedy_generate(backend, batch, stop, assets.token_ids, max_new_tokens)
        picks = np.take_along_axis(batch.candidates.numpy(), gen.item_scores.argmax(-1)[:, None], 1)[:, 0]
        for i, ids, pick in zip(idx, gen.tokens, picks.tolist()):
            answers[i] = stop.first_line(ids)
            sasrec_pick[i] = pick
        bar.update(len(idx))
    bar.close()

    records, judgements, sasrec_hits = [], [], 0
    for i, row in enumerate(evalset.rows):
        titles = [catalogue.title(c) for c in row.candidates]
        j = judge(answers[i], catalogue.title(row.target), titles)
        judgements.append(j)
        sasrec_hits += sasrec_pick[i] == row.target
        records.append({"row_id": row.row_id, "answer": answers[i], "target": catalogue.title(row.target),
                        "target_id": row.target, "valid": j.valid, "correct": j.correct,
                        "sasrec_pick": sasrec_pick[i], "candidates": json.dumps(titles, ensure_ascii=False),
                        "candidate_ids": json.dumps(list(row.candidates))})
    summary = summarize(judgements) | {
        "sasrec_hit_ratio@1": sasrec_hits / len(evalset.rows) if evalset.rows else 0.0,
        "split": evalset.split, "seed": evalset.seed, "num_candidates": len(evalset.rows[0].candidates),
    }
    return EvalOutput(records, summary)


def evaluate_model(loaded, evalset: EvalSet, *, device: str = "cpu", **kwargs) -> EvalOutput:
    """The PyTorch reference evaluation of a LoadedCheckpoint (keyword arguments as evaluate_backend)."""
    from ilora_export.runtime.torch_backend import TorchBackend

    kwargs.setdefault("templates", loaded.templates)
    return evaluate_backend(TorchBackend(loaded.model, device), loaded.assets(), evalset, **kwargs)


def write_eval_output(out: EvalOutput, output_dir, extra: dict | None = None) -> Path:
    """predictions.csv (one row per sample) and summary.json, each written atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fields = list(out.records[0]) if out.records else ["row_id"]
    with atomic_path(output_dir / PREDICTIONS) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(out.records)
    with atomic_path(output_dir / SUMMARY) as tmp:
        tmp.write_text(json.dumps(out.summary | (extra or {}), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return output_dir


BACKENDS = ("torch", "ort", "trt")


def open_backend(target, backend: str = "torch", *, device: str = "cpu", base_model: str | None = None,
                 threads: int | None = None, bank=None, bank_mode: str = "session"):
    """(backend, assets) for a checkpoint (torch) or an export directory (ort)."""
    if backend == "torch":
        from ilora_export.checkpoint import load_checkpoint
        from ilora_export.runtime.torch_backend import TorchBackend

        if (Path(target) / "manifest.json").is_file():
            raise IloraError(f"{target} is an export directory; the torch backend evaluates checkpoints",
                             "use --backend ort for an export, or pass the checkpoint folder")
        if device == "cuda" and not torch.cuda.is_available():
            raise IloraError("--device cuda: PyTorch sees no CUDA device",
                             "install a CUDA build of PyTorch, or use --device cpu")
        if threads:
            torch.set_num_threads(threads)
        loaded = load_checkpoint(target, base_model=base_model, device=device)
        return TorchBackend(loaded.model, device), loaded.assets()
    if backend == "ort":
        from ilora_export.export.load import load_export
        from ilora_export.runtime.ort_backend import OrtBackend

        if (Path(target) / "config.json").is_file() and not (Path(target) / "manifest.json").exists():
            raise IloraError(f"{target} is a checkpoint; the ort backend runs an export directory",
                             f"export it first: ilora-export onnx {target} -o EXPORT_DIR")
        export = load_export(target)
        return OrtBackend(export, device=device, threads=threads, bank=bank, bank_mode=bank_mode), export.assets
    if backend == "trt":
        import json

        from ilora_export.export.load import load_export
        from ilora_export.runtime.trt_backend import TrtBackend
        from ilora_export.trt.build import ENGINES_INDEX

        index_file = Path(target) / ENGINES_INDEX
        if not index_file.is_file():
            raise IloraError(f"{target}: no {ENGINES_INDEX}; not an engines folder",
                             "build engines first: ilora-export trt EXPORT_DIR (they go to EXPORT_DIR/trt)")
        export = load_export(json.loads(index_file.read_text(encoding="utf-8"))["export"])
        return TrtBackend(target, export), export.assets
    raise IloraError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")


def run_eval(target, data_dir, split: str = "test", *, backend: str = "torch", device: str = "cpu",
             batch_size: int = 8, limit: int | None = None, output=None, seed: int = 0,
             eval_set=None, prompt_file=None, base_model: str | None = None, threads: int | None = None,
             bank=None, progress: bool = True) -> dict:
    """Open a checkpoint (torch) or export (ort), materialize (or read) the evaluation set, evaluate,
    write results. This is the library call behind ``ilora-export eval``. Returns the summary dict.
    """
    from ilora_export.data.evalset import load_or_build_eval_set, write_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.data.prompts import load_prompt_file

    dataset = load_dataset(data_dir)
    evalset = load_or_build_eval_set(dataset, split, seed, Path(eval_set) if eval_set else None)
    if limit is not None:
        evalset.rows = evalset.rows[:limit]
    runner, assets = open_backend(target, backend, device=device, base_model=base_model, threads=threads,
                                  bank=bank)
    if dataset.catalogue.num_items != assets.catalogue.num_items:
        raise DataError(f"{data_dir}: catalogue has {dataset.catalogue.num_items} items, the model's "
                        f"{assets.catalogue.num_items}", "evaluate with the dataset the model was trained on")
    templates = load_prompt_file(prompt_file) if prompt_file else None
    t0 = time.perf_counter()
    out = evaluate_backend(runner, assets, evalset, batch_size=batch_size, progress=progress, templates=templates)
    wall = time.perf_counter() - t0
    extra = {"backend": backend, "device": device, "batch_size": batch_size, "wall_seconds": round(wall, 2),
             "target": str(target), "data": str(data_dir), "threads": threads or torch.get_num_threads()}
    out.summary |= extra
    if output is not None:
        write_eval_output(out, output)
        write_eval_set(evalset, Path(output) / EVALSET)
    return out.summary
