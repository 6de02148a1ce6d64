"""Answering rows with any runtime backend, and the metrics and files of an evaluation.

The PyTorch backend gives the reference answers; every other backend is checked against them,
answer for answer.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ilora_export.data.evalset import EvalSet
from ilora_export.eval.metrics import Judgement, judge, summarize
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


def evaluate_backend(
    backend,
    assets,
    evalset: EvalSet,
    *,
    batch_size: int = 8,
    progress: bool = True,
    templates=None,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> EvalOutput:
    """Greedy answers and metrics for every row of ``evalset`` with any runtime backend.

    ``assets`` (a PromptAssets) supplies the tokenizer, catalogue, templates and token ids.
    """
    with tqdm(total=len(evalset.rows), desc=f"eval ({backend.name})", unit="row", disable=not progress) as bar:
        records = answer_rows(
            backend,
            assets,
            evalset.rows,
            batch_size=batch_size,
            templates=templates,
            max_new_tokens=max_new_tokens,
            on_batch=bar.update,
            where=f"evaluation set ({evalset.split})",
        )
    return EvalOutput(records, summarize_records(records, evalset))


def answer_rows(
    backend,
    assets,
    rows,
    *,
    batch_size: int = 8,
    templates=None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    on_batch=None,
    where: str = "evaluation set",
) -> list[dict]:
    """One record per row of ``rows`` (EvalRows), in their order: the greedy answer, its judgement, the
    SASRec pick. Rows are batched by prompt length; the answers do not depend on the batching."""
    catalogue = assets.catalogue
    for row in rows:  # a silent wrong title is never shown: ids must exist in the model's catalogue
        catalogue.check_ids([*row.seq[: row.len_seq], row.target, *row.candidates], f"{where}, row {row.row_id}")
    builder = assets.prompt_builder(templates)
    stop = assets.stop_rule()
    examples = [builder.encode(r.seq, r.len_seq, r.candidates) for r in rows]
    # Length bucketing: rows of similar prompt length share a batch (answers do not depend on it).
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    answers: dict[int, str] = {}
    sasrec_pick: dict[int, int] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = builder.collate([examples[i] for i in idx])
        gen = greedy_generate(backend, batch, stop, assets.token_ids, max_new_tokens)
        picks = np.take_along_axis(batch.candidates.numpy(), gen.item_scores.argmax(-1)[:, None], 1)[:, 0]
        for i, ids, pick in zip(idx, gen.tokens, picks.tolist()):
            answers[i] = stop.first_line(ids)
            sasrec_pick[i] = pick
        if on_batch is not None:
            on_batch(len(idx))

    records = []
    for i, row in enumerate(rows):
        titles = [catalogue.title(c) for c in row.candidates]
        j = judge(answers[i], catalogue.title(row.target), titles)
        records.append(
            {
                "row_id": row.row_id,
                "answer": answers[i],
                "target": catalogue.title(row.target),
                "target_id": row.target,
                "valid": j.valid,
                "correct": j.correct,
                "sasrec_pick": sasrec_pick[i],
                "candidates": json.dumps(titles, ensure_ascii=False),
                "candidate_ids": json.dumps(list(row.candidates)),
            }
        )
    return records


def summarize_records(records: list[dict], evalset: EvalSet) -> dict:
    """ValidRatio, HitRatio@1 and the SASRec baseline over ``records`` (from :func:`answer_rows`)."""
    judgements = [Judgement(bool(r["valid"]), bool(r["correct"]), None) for r in records]
    sasrec_hits = sum(r["sasrec_pick"] == r["target_id"] for r in records)
    return summarize(judgements) | {
        "sasrec_hit_ratio@1": sasrec_hits / len(records) if records else 0.0,
        "split": evalset.split,
        "seed": evalset.seed,
        "num_candidates": evalset.num_candidates,
    }


def evaluate_model(loaded, evalset: EvalSet, *, device: str = "cpu", **kwargs) -> EvalOutput:
    """The PyTorch reference evaluation of a LoadedCheckpoint (keyword arguments as evaluate_backend)."""
    from ilora_export.runtime.load import checkpoint_assets
    from ilora_export.runtime.torch_backend import TorchBackend

    kwargs.setdefault("templates", loaded.templates)
    return evaluate_backend(TorchBackend(loaded.model, device), checkpoint_assets(loaded), evalset, **kwargs)


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
