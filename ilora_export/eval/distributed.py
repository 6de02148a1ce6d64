"""The evaluation on Ray Data: shards of the evaluation set mapped over a pool of stateful actors.

Each actor receives the EvalRequest, the shard plan, the rows and the prompt templates, holds one
onnxruntime session set (the export, its expert bank folded in once) and evaluates whole shards,
writing each shard's Parquet file itself (``eval.shards``: atomic, so a shard re-run by Ray after a
failure replaces an identical file and the result stays exactly once). The driver only plans the
shards and collects. Without ``request.address`` Ray starts a local cluster on this machine; with
one, every worker must see the output folder (shared storage) and the export.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ilora_export.data.evalset import EvalRow
from ilora_export.eval.answers import answer_rows
from ilora_export.eval.request import EvalRequest
from ilora_export.eval.shards import ShardStore
from ilora_export.lazy import require


def import_ray():
    return require(
        "ray", "ray.data", purpose="--ray", install='pip install "ilora-export[ray]" (or: pip install "ray[data]")'
    )


class ShardEvaluator:
    """A Ray Data actor: opens the export of ``request`` once, then evaluates whole shards
    (``{"shard": [k, ...]}``) of ``work``, a Ray object reference to (ShardStore, rows, templates).

    Everything it needs is handed to it: the request, the shard plan and fingerprint, the evaluation
    set's rows and the prompt templates. It reads only the export and writes only its shard files.
    """

    def __init__(self, request: EvalRequest, work):
        from ilora_export.runtime.load import open_backend

        self.request = request
        self.store, self.rows, self.templates = import_ray().get(work)
        t0 = time.perf_counter()
        # the actors reserve CPUs only: their sessions run on the CPU
        self.backend, self.assets = open_backend(request.target, "ort", threads=request.threads, bank=request.bank)
        self.load_s = time.perf_counter() - t0
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards, rows, seconds = [], [], []
        for k in batch["shard"].tolist():
            start, end = self.store.plan[k]
            t0 = time.perf_counter()
            records = answer_rows(
                self.backend,
                self.assets,
                self.rows[start:end],
                batch_size=self.request.batch_size,
                templates=self.templates,
            )
            self.store.write(k, records, time.perf_counter() - t0, self.name)
            shards.append(k)
            rows.append(end - start)
            seconds.append(time.perf_counter() - t0)
        return {
            "shard": np.array(shards),
            "rows": np.array(rows),
            "seconds": np.array(seconds),
            "load_s": np.full(len(shards), self.load_s),
            "worker": np.array([self.name] * len(shards)),
        }


def ray_evaluate(
    request: EvalRequest,
    store: ShardStore,
    rows: list[EvalRow],
    pending: list[int],
    *,
    templates=None,
    on_rows: Callable[[int], None] | None = None,
) -> dict:
    """Evaluate the ``pending`` shards of ``store`` (over ``rows``, the evaluation set's) on Ray Data
    actors, as ``request`` says (cluster address, workers, threads, batch size); returns what ran where.

    Each actor receives ``request`` (its paths absolute, its threads the actor's), and once, through
    Ray's object store, the store, the rows and the prompt ``templates``."""
    import logging

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=request.address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
            log_to_driver=False,
        )
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset INFO lines otherwise
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller shows one bar over rows
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = request.num_workers or max(1, cpus // (request.threads or 1))
        threads = request.threads or max(1, cpus // workers)
        workers = min(workers, len(pending))
        work = ray.put((replace(store, root=store.root.resolve()), rows, templates))
        ds = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
        done = ds.map_batches(
            ShardEvaluator,
            batch_size=1,
            concurrency=workers,
            num_cpus=threads,
            fn_constructor_kwargs={"request": replace(request.resolved(), threads=threads), "work": work},
        )
        used, load_s = set(), []
        for row in done.iter_rows():
            used.add(str(row["worker"]))
            load_s.append(float(row["load_s"]))
            if on_rows is not None:
                on_rows(int(row["rows"]))
    finally:
        if started:
            ray.shutdown()
    return {
        "ray_workers": workers,
        "ray_threads_per_worker": threads,
        "ray_workers_used": len(used),
        "ray_model_load_s": max(load_s, default=0.0),
    }
