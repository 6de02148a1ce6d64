"""``run_eval``: one EvalRequest evaluated end to end, the library call behind ``ilora-export eval``."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from ilora_export.data.evalset import EvalSet
from ilora_export.eval.answers import (
    EVALSET,
    EvalOutput,
    answer_rows,
    evaluate_backend,
    summarize_records,
    write_eval_output,
)
from ilora_export.eval.request import EvalRequest
from ilora_export.eval.shards import ShardStore, evaluate_pending
from ilora_export.runtime.load import model_facts, open_backend


def run_eval(request: EvalRequest, *, progress: bool = True) -> dict:
    """Evaluate ``request``: open its checkpoint (torch), export (ort) or engines folder (trt),
    materialize (or read) the evaluation set, answer every row, write the results when it names an
    output folder. Returns the summary dict; ``progress`` shows a bar over rows.

    Before any work the dataset must be the model's: the same catalogue (ids and titles; with
    ``allow_catalogue_mismatch`` differing titles are evaluated with the model's, and recorded in the
    summary) and histories of the model's state size. With an output folder the results are written
    per shard (``eval.shards``), so a killed run resumes where it stopped; with ``ray`` the shards are
    evaluated on Ray Data actors (``eval.distributed``).
    """
    import torch

    from ilora_export.data.prompts import load_prompt_file

    evalset, fit = _eval_set(request)
    templates = load_prompt_file(request.prompt_file) if request.prompt_file else None
    extra = {
        "backend": request.backend,
        "device": request.device,
        "batch_size": request.batch_size,
        "target": str(request.target),
        "data": str(request.data_dir),
        "threads": request.threads or torch.get_num_threads(),
    } | fit
    t0 = time.perf_counter()
    if request.output is None:
        runner, assets = _open_backend(request)
        out = evaluate_backend(
            runner, assets, evalset, batch_size=request.batch_size, progress=progress, templates=templates
        )
        return out.summary | extra | {"wall_seconds": round(time.perf_counter() - t0, 2)}

    from ilora_export.data.evalset import write_eval_set

    store = ShardStore.for_request(request, evalset)
    store.open(restart=request.restart, replace_other=request.replace_other)
    write_eval_set(evalset, Path(request.output) / EVALSET)
    pending = store.pending()
    done_rows = len(evalset.rows) - sum(store.plan[k][1] - store.plan[k][0] for k in pending)
    bar = tqdm(
        total=len(evalset.rows),
        initial=done_rows,
        desc=f"eval ({request.backend}{', ray' if request.ray else ''})",
        unit="row",
        disable=not progress,
    )
    if pending and request.ray:
        from ilora_export.eval.distributed import ray_evaluate

        extra |= ray_evaluate(request, store, evalset.rows, pending, templates=templates, on_rows=bar.update)
    elif pending:
        runner, assets = _open_backend(request)
        evaluate_pending(
            store,
            lambda pos: answer_rows(
                runner,
                assets,
                [evalset.rows[i] for i in pos],
                batch_size=request.batch_size,
                templates=templates,
                on_batch=bar.update,
            ),
        )
    bar.close()
    records, shards = store.collect()
    summary = (
        summarize_records(records, evalset)
        | extra
        | {
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "shards": len(shards),
            "shard_rows": request.shard_rows,
            "shards_resumed": len(store.plan) - len(pending),
            "ray": request.ray,
        }
    )
    write_eval_output(EvalOutput(records, summary), request.output)
    return summary


def _eval_set(request: EvalRequest) -> tuple[EvalSet, dict]:
    """(the evaluation set of ``request``, what the catalogue check records): refused when the
    dataset is not the model's (catalogue, history length)."""
    from ilora_export.data.evalset import check_catalogue, check_history_length, load_or_build_eval_set
    from ilora_export.data.llara import load_dataset

    dataset = load_dataset(request.data_dir)
    catalogue, state_size = model_facts(request.target, request.backend)
    fit = check_catalogue(
        dataset.catalogue,
        catalogue,
        allow_mismatch=request.allow_catalogue_mismatch,
        override="--allow-catalogue-mismatch",
    )
    eval_set = request.eval_set
    evalset = load_or_build_eval_set(dataset, request.split, request.seed, Path(eval_set) if eval_set else None)
    check_history_length(evalset, state_size, eval_set or dataset.split_path(request.split))
    if request.limit is not None:
        evalset.rows = evalset.rows[: request.limit]
    return evalset, fit


def _open_backend(request: EvalRequest):
    """(backend, assets) of the model ``request`` evaluates."""
    return open_backend(
        request.target,
        request.backend,
        device=request.device,
        base_model=request.base_model,
        threads=request.threads,
        bank=request.bank,
    )
