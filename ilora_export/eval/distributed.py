"""The evaluation on Ray Data: shards of the evaluation set mapped over a pool of stateful actors.

Each actor holds one onnxruntime session set (the export, its expert bank folded in once) and
evaluates whole shards, writing each shard's Parquet file itself (``eval.shards``: atomic, so a shard
re-run by Ray after a failure replaces an identical file and the result stays exactly once). The
driver only plans the shards and collects. Without ``address`` Ray starts a local cluster on this
machine; with one, every worker must see the output folder (shared storage) and the export.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ilora_export.eval.shards import ShardStore
from ilora_export.lazy import require


def import_ray():
    return require("ray", "ray.data", purpose="--ray",
                   install='pip install "ilora-export[ray]" (or: pip install "ray[data]")')


class ShardEvaluator:
    """A Ray Data actor: loads the export once, then evaluates whole shards (``{"shard": [k, ...]}``)."""

    def __init__(self, target, root, threads, bank, batch_size, prompt_file):
        # small arguments only: the rows and the plan are read from the output folder
        import json

        from ilora_export.data.evalset import read_eval_set
        from ilora_export.data.prompts import load_prompt_file
        from ilora_export.eval.answers import EVALSET
        from ilora_export.eval.shards import RUN, plan_shards
        from ilora_export.runtime.load import open_backend

        t0 = time.perf_counter()
        self.backend, self.assets = open_backend(target, "ort", threads=threads, bank=bank)
        self.load_s = time.perf_counter() - t0
        root = Path(root)
        self.rows = read_eval_set(root / EVALSET).rows
        identity = json.loads((root / RUN).read_text(encoding="utf-8"))["identity"]
        self.store = ShardStore(root, identity, plan_shards(len(self.rows), identity["shard_rows"]),
                                [r.row_id for r in self.rows])
        self.batch_size = batch_size
        self.templates = load_prompt_file(prompt_file) if prompt_file else None
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ilora_export.eval.answers import answer_rows

        shards, rows, seconds = [], [], []
        for k in batch["shard"].tolist():
            start, end = self.store.plan[k]
            t0 = time.perf_counter()
            records = answer_rows(self.backend, self.assets, self.rows[start:end], batch_size=self.batch_size,
                                  templates=self.templates)
            self.store.write(k, records, time.perf_counter() - t0, self.name)
            shards.append(k)
            rows.append(end - start)
            seconds.append(time.perf_counter() - t0)
        return {"shard": np.array(shards), "rows": np.array(rows), "seconds": np.array(seconds),
                "load_s": np.full(len(shards), self.load_s), "worker": np.array([self.name] * len(shards))}


def ray_evaluate(store: ShardStore, target, pending: list[int], *, address: str | None = None,
                 num_workers: int | None = None, threads: int | None = None, bank=None, batch_size: int = 8,
                 prompt_file=None, on_rows: Callable[[int], None] | None = None) -> dict:
    """Evaluate the ``pending`` shards of ``store`` on Ray Data actors; returns what ran where."""
    import logging

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=True, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset INFO lines otherwise
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller shows one bar over rows
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = num_workers or max(1, cpus // (threads or 1))
        threads = threads or max(1, cpus // workers)
        workers = min(workers, len(pending))
        ds = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
        done = ds.map_batches(
            ShardEvaluator, batch_size=1, concurrency=workers, num_cpus=threads,
            fn_constructor_kwargs={"target": str(Path(target).resolve()), "root": str(store.root.resolve()),
                                   "threads": threads, "bank": str(bank) if bank else None,
                                   "batch_size": batch_size, "prompt_file": str(prompt_file) if prompt_file else None})
        used, load_s = set(), []
        for row in done.iter_rows():
            used.add(str(row["worker"]))
            load_s.append(float(row["load_s"]))
            if on_rows is not None:
                on_rows(int(row["rows"]))
    finally:
        if started:
            ray.shutdown()
    return {"ray_workers": workers, "ray_threads_per_worker": threads, "ray_workers_used": len(used),
            "ray_model_load_s": max(load_s, default=0.0)}
