"""``run_eval``: the library call behind ``ilora-export eval``."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ilora_export.data.evalset import EvalSet
from ilora_export.errors import IloraError
from ilora_export.eval.answers import (
    EVALSET,
    EvalOutput,
    answer_rows,
    evaluate_backend,
    summarize_records,
    write_eval_output,
)
from ilora_export.fileio import sha256_file
from ilora_export.runtime.load import model_facts, open_backend


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
