"""The reference (PyTorch) evaluation: greedy answers on a materialized evaluation set.

Every other backend is checked against what this produces, answer for answer.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ilora_export.data.evalset import EvalSet
from ilora_export.errors import DataError, IloraError
from ilora_export.eval.metrics import judge, summarize
from ilora_export.fileio import atomic_path
from ilora_export.model.generate import (
    MAX_NEW_TOKENS,
    StopRule,
    eos_token_ids,
    greedy_generate,
)
from ilora_export.model.prompting import PromptEncoder

PREDICTIONS = "predictions.csv"
SUMMARY = "summary.json"
EVALSET = "evalset.jsonl"


@dataclass
class EvalOutput:
    records: list[dict]  # one per row, in eval-set order
    summary: dict


@torch.no_grad()
def evaluate_model(loaded, evalset: EvalSet, *, batch_size: int = 8, device: str = "cpu",
                   progress: bool = True, templates=None,
                   max_new_tokens: int = MAX_NEW_TOKENS) -> EvalOutput:
    """Greedy answers and metrics for every row of ``evalset``; ``loaded`` is a LoadedCheckpoint."""
    model, catalogue = loaded.model, loaded.catalogue
    for row in evalset.rows:  # a silent wrong title is never shown: ids must exist in the model's catalogue
        catalogue.check_ids([*row.seq[:row.len_seq], row.target, *row.candidates],
                            f"evaluation set ({evalset.split}), row {row.row_id}")
    model.to(device).eval()
    encoder = PromptEncoder(model.tokenizer, catalogue.title, templates or loaded.templates)
    stop = StopRule(model.tokenizer, eos_token_ids(model.tokenizer, model.llm.generation_config))
    examples = [encoder.encode(r.seq, r.len_seq, r.candidates) for r in evalset.rows]
    # Length bucketing: rows of similar prompt length share a batch (answers do not depend on it).
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    answers: dict[int, str] = {}
    sasrec_pick: dict[int, int] = {}
    bar = tqdm(total=len(examples), desc="eval (torch)", unit="row", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encoder.collate([examples[i] for i in idx]).to(device)
        generated = greedy_generate(model, batch, stop, max_new_tokens)
        scores = model.sasrec.score_candidates(batch.seq, batch.len_seq, batch.candidates)  # [B, N]
        picks = batch.candidates.gather(1, scores.argmax(-1, keepdim=True)).squeeze(1).tolist()
        for i, ids, pick in zip(idx, generated, picks):
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


def run_eval(checkpoint, data_dir, split: str = "test", *, backend: str = "torch", device: str = "cpu",
             batch_size: int = 8, limit: int | None = None, output=None, seed: int = 0,
             eval_set=None, prompt_file=None, base_model: str | None = None,
             progress: bool = True) -> dict:
    """Load a checkpoint, materialize (or read) the evaluation set, evaluate, write results.

    This is the library call behind ``ilora-export eval``. Returns the summary dict.
    """
    from ilora_export.checkpoint import load_checkpoint
    from ilora_export.data.evalset import load_or_build_eval_set, write_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.data.prompts import load_prompt_file

    if backend != "torch":
        raise IloraError(f"unknown backend {backend!r}", "evaluate with --backend torch")
    if device == "cuda" and not torch.cuda.is_available():
        raise IloraError("--device cuda: PyTorch sees no CUDA device",
                         "install a CUDA build of PyTorch, or use --device cpu")
    dataset = load_dataset(data_dir)
    evalset = load_or_build_eval_set(dataset, split, seed, Path(eval_set) if eval_set else None)
    if limit is not None:
        evalset.rows = evalset.rows[:limit]
    loaded = load_checkpoint(checkpoint, base_model=base_model, device=device)
    if dataset.catalogue.num_items != loaded.catalogue.num_items:
        raise DataError(f"{data_dir}: catalogue has {dataset.catalogue.num_items} items, the checkpoint's "
                        f"{loaded.catalogue.num_items}", "evaluate with the dataset the checkpoint was trained on")
    templates = load_prompt_file(prompt_file) if prompt_file else None
    t0 = time.perf_counter()
    out = evaluate_model(loaded, evalset, batch_size=batch_size, device=device, progress=progress,
                         templates=templates)
    wall = time.perf_counter() - t0
    extra = {"backend": backend, "device": device, "batch_size": batch_size, "wall_seconds": round(wall, 2),
             "checkpoint": str(checkpoint), "data": str(data_dir)}
    out.summary |= extra
    if output is not None:
        write_eval_output(out, output)
        write_eval_set(evalset, Path(output) / EVALSET)
    return out.summary
