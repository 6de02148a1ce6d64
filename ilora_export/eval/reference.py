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
from ilora_export.errors import IloraError
from ilora_export.eval.metrics import Judgement, judge, summarize
from ilora_export.fileio import atomic_path, sha256_file
from ilora_export.model.generate import MAX_NEW_TOKENS
from ilora_export.runtime.generator import greedy_generate
from ilora_export.runtime.load import model_facts, open_backend

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
    with tqdm(total=len(evalset.rows), desc=f"eval ({backend.name})", unit="row", disable=not progress) as bar:
        records = answer_rows(backend, assets, evalset.rows, batch_size=batch_size, templates=templates,
                              max_new_tokens=max_new_tokens, on_batch=bar.update,
                              where=f"evaluation set ({evalset.split})")
    return EvalOutput(records, summarize_records(records, evalset))


def answer_rows(backend, assets, rows, *, batch_size: int = 8, templates=None, max_new_tokens: int = MAX_NEW_TOKENS,
                on_batch=None, where: str = "evaluation set") -> list[dict]:
    """One record per row of ``rows`` (EvalRows), in their order: the greedy answer, its judgement, the
    SASRec pick. Rows are batched by prompt length; the answers do not depend on the batching."""
    catalogue = assets.catalogue
    for row in rows:  # a silent wrong title is never shown: ids must exist in the model's catalogue
        catalogue.check_ids([*row.seq[:row.len_seq], row.target, *row.candidates], f"{where}, row {row.row_id}")
    builder = assets.prompt_builder(templates)
    stop = assets.stop_rule()
    examples = [builder.encode(r.seq, r.len_seq, r.candidates) for r in rows]
    # Length bucketing: rows of similar prompt length share a batch (answers do not depend on it).
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    answers: dict[int, str] = {}
    sasrec_pick: dict[int, int] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
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
        records.append({"row_id": row.row_id, "answer": answers[i], "target": catalogue.title(row.target),
                        "target_id": row.target, "valid": j.valid, "correct": j.correct,
                        "sasrec_pick": sasrec_pick[i], "candidates": json.dumps(titles, ensure_ascii=False),
                        "candidate_ids": json.dumps(list(row.candidates))})
    return records


def summarize_records(records: list[dict], evalset: EvalSet) -> dict:
    """ValidRatio, HitRatio@1 and the SASRec baseline over ``records`` (from :func:`answer_rows`)."""
    judgements = [Judgement(bool(r["valid"]), bool(r["correct"]), None) for r in records]
    sasrec_hits = sum(r["sasrec_pick"] == r["target_id"] for r in records)
    return summarize(judgements) | {
        "sasrec_hit_ratio@1": sasrec_hits / len(records) if records else 0.0,
        "split": evalset.split, "seed": evalset.seed, "num_candidates": evalset.num_candidates,
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


def run_eval(target, data_dir, split: str = "test", *, backend: str = "torch", device: str = "cpu",
             batch_size: int = 8, limit: int | None = None, output=None, seed: int = 0,
             eval_set=None, prompt_file=None, base_model: str | None = None, threads: int | None = None,
             bank=None, progress: bool = True, shard_rows: int | None = None, restart: bool = False,
             replace_other: bool = False, ray: bool = False, address: str | None = None,
             num_workers: int | None = None, allow_catalogue_mismatch: bool = False) -> dict:
    """Open a checkpoint (torch) or export (ort), materialize (or read) the evaluation set, evaluate,
    write results. This is the library call behind ``ilora-export eval``. Returns the summary dict.

    With ``output`` the results are written per shard of ``shard_rows`` rows (``eval.shards``), so a
    killed run resumes where it stopped (``restart`` discards finished shards; ``replace_other`` only
    those of another evaluation, for a folder the caller owns); ``ray`` evaluates the shards on Ray
    Data actors (local when no ``address``), ``num_workers`` of them.

    Before any work the dataset must be the model's: the same catalogue (ids and titles; with
    ``allow_catalogue_mismatch`` differing titles are evaluated with the model's, and recorded in the
    summary) and histories of the model's state size.
    """
    from ilora_export.data.evalset import (
        check_catalogue,
        check_history_length,
        load_or_build_eval_set,
    )
    from ilora_export.data.llara import load_dataset
    from ilora_export.data.prompts import load_prompt_file

    if ray and output is None:
        raise IloraError("--ray writes its results per shard into an output folder", "add -o OUTPUT_DIR")
    if ray and backend != "ort":
        raise IloraError(f"--ray runs the ort backend (not {backend})", "export first and pass --backend ort")
    dataset = load_dataset(data_dir)
    catalogue, state_size = model_facts(target, backend)
    fit = check_catalogue(dataset.catalogue, catalogue, allow_mismatch=allow_catalogue_mismatch,
                          override="--allow-catalogue-mismatch")
    evalset = load_or_build_eval_set(dataset, split, seed, Path(eval_set) if eval_set else None)
    check_history_length(evalset, state_size, eval_set or dataset.split_path(split))
    if limit is not None:
        evalset.rows = evalset.rows[:limit]
    templates = load_prompt_file(prompt_file) if prompt_file else None
    extra = {"backend": backend, "device": device, "batch_size": batch_size, "target": str(target),
             "data": str(data_dir), "threads": threads or torch.get_num_threads()} | fit
    t0 = time.perf_counter()
    if output is None:
        runner, assets = open_backend(target, backend, device=device, base_model=base_model, threads=threads,
                                      bank=bank)
        out = evaluate_backend(runner, assets, evalset, batch_size=batch_size, progress=progress,
                               templates=templates)
        return out.summary | extra | {"wall_seconds": round(time.perf_counter() - t0, 2)}

    from ilora_export.data.evalset import write_eval_set
    from ilora_export.eval.shards import (
        DEFAULT_SHARD_ROWS,
        ShardStore,
        plan_shards,
        target_identity,
    )

    output = Path(output)
    shard_rows = shard_rows or DEFAULT_SHARD_ROWS
    identity = {"model": target_identity(target, bank), "backend": backend, "device": device,
                "evalset_sha256": _eval_set_sha256(evalset), "shard_rows": shard_rows,
                "prompt_file_sha256": sha256_file(prompt_file) if prompt_file else None}
    store = ShardStore(output, identity, plan_shards(len(evalset.rows), shard_rows),
                       [r.row_id for r in evalset.rows])
    store.open(restart=restart, replace_other=replace_other)
    write_eval_set(evalset, output / EVALSET)
    pending = store.pending()
    done_rows = len(evalset.rows) - sum(store.plan[k][1] - store.plan[k][0] for k in pending)
    bar = tqdm(total=len(evalset.rows), initial=done_rows, desc=f"eval ({backend}{', ray' if ray else ''})",
               unit="row", disable=not progress)
    if pending and ray:
        from ilora_export.eval.distributed import ray_evaluate

        extra |= ray_evaluate(store, target, pending, address=address, num_workers=num_workers, threads=threads,
                              bank=bank, batch_size=batch_size, prompt_file=prompt_file, on_rows=bar.update)
    elif pending:
        from ilora_export.eval.shards import evaluate_pending

        runner, assets = open_backend(target, backend, device=device, base_model=base_model, threads=threads,
                                      bank=bank)
        evaluate_pending(store, lambda pos: answer_rows(runner, assets, [evalset.rows[i] for i in pos],
                                                        batch_size=batch_size, templates=templates,
                                                        on_batch=bar.update))
    bar.close()
    records, shards = store.collect()
    summary = summarize_records(records, evalset) | extra | {
        "wall_seconds": round(time.perf_counter() - t0, 2), "shards": len(shards), "shard_rows": shard_rows,
        "shards_resumed": len(store.plan) - len(pending), "ray": ray}
    write_eval_output(EvalOutput(records, summary), output)
    return summary


def _eval_set_sha256(evalset: EvalSet) -> str:
    import hashlib

    from ilora_export.data.evalset import eval_set_bytes

    return hashlib.sha256(eval_set_bytes(evalset)).hexdigest()
