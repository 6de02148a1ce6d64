"""Sharded, resumable evaluation output: one Parquet file per shard of the evaluation set.

::

    OUT/
      run.json                 what is being evaluated (target, backend, eval set, shard size) + fingerprint
      evalset.jsonl            the materialized evaluation set (the rows every shard indexes)
      shards/shard-00000.parquet ...   one record per row, with the shard's row ids in its metadata
      predictions.csv, summary.json    written once every shard is in, from the shards

A shard file appears atomically (written beside, then renamed), so a killed run leaves only whole
shards; the next run with the same ``run.json`` skips them. A run with another target or evaluation
set refuses to mix its results into the folder. The summary is built from the shard files and checks
that every row of the evaluation set appears exactly once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ilora_export.artifacts.kinds import EVALUATION, of_kind
from ilora_export.data.evalset import EvalSet
from ilora_export.errors import IloraError
from ilora_export.eval.request import EvalRequest
from ilora_export.fileio import (
    atomic_path,
    check_replaceable,
    clean_stale_temporaries,
    make_dirs,
    remove_empty_dirs,
)
from ilora_export.lazy import require

RUN = "run.json"
SHARDS = "shards"
META_KEY = b"ilora_export.shard"


def _pyarrow():
    return require("pyarrow", "pyarrow.parquet", purpose="sharded evaluation output", install="pip install pyarrow")


def plan_shards(num_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """[start, end) positions in the evaluation set, one pair per shard (``shard_rows`` >= 1, as an
    EvalRequest checks)."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    return [(s, min(s + shard_rows, num_rows)) for s in range(0, num_rows, shard_rows)]


@dataclass
class ShardStore:
    """The shard files of one evaluation run in ``root`` (see the module docstring)."""

    root: Path
    identity: dict  # target, backend, eval set hash, shard size ... (EvalRequest.identity)
    plan: list[tuple[int, int]]
    row_ids: list[int]  # the eval set's row ids, in its order

    @classmethod
    def for_request(cls, request: EvalRequest, evalset: EvalSet) -> ShardStore:
        """The store of ``request`` (which has an output folder) evaluating ``evalset``, its rows in
        shards of ``request.shard_rows``, fingerprinted by ``request.identity``."""
        return cls(
            Path(request.output),
            request.identity(evalset),
            plan_shards(len(evalset.rows), request.shard_rows),
            [r.row_id for r in evalset.rows],
        )

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()

    def path(self, index: int) -> Path:
        return self.root / SHARDS / f"shard-{index:05d}.parquet"

    def expected_ids(self, index: int) -> list[int]:
        start, end = self.plan[index]
        return self.row_ids[start:end]

    def open(self, *, restart: bool = False, replace_other: bool = False) -> None:
        """Create or reopen the folder; refuses one that holds another evaluation (or an unreadable
        run.json, or shard files outside the plan) unless ``restart`` (discard whatever is there) or
        ``replace_other`` (discard it only when it is not this evaluation)."""
        # predictions.csv, summary.json ... are written into the folder: never over a user's files
        check_replaceable(self.root, of_kind(EVALUATION), "an evaluation output", into=True)
        run = self.root / RUN
        if run.is_file() and not restart:
            old = self._read_run()
            if (old is None or old["fingerprint"] != self.fingerprint) and replace_other:
                restart = True
            elif old is None:
                raise IloraError(
                    f"{run}: unreadable or corrupt (not the JSON object an evaluation writes)",
                    "pass --restart to discard this folder's results and evaluate from scratch, "
                    "or write to another -o folder",
                )
            elif old["fingerprint"] != self.fingerprint:
                differ = sorted(
                    k
                    for k in set(old["identity"]) | set(self.identity)
                    if old["identity"].get(k) != self.identity.get(k)
                )
                raise IloraError(
                    f"{self.root} holds results of another evaluation (differs in: {', '.join(differ) or 'format'})",
                    "write to another -o folder, or pass --restart to discard those results",
                )
        shards = self.root / SHARDS
        if restart and shards.is_dir():
            for f in shards.glob("shard-*.parquet"):
                f.unlink()
        created = make_dirs(shards)
        try:
            clean_stale_temporaries(folder=shards)  # writes cut short by a kill (a live writer's are kept)
            self._refuse_unexpected()
            with atomic_path(run) as tmp:
                tmp.write_text(
                    json.dumps(
                        {
                            "fingerprint": self.fingerprint,
                            "identity": self.identity,
                            "shards": len(self.plan),
                            "rows": len(self.row_ids),
                        },
                        indent=2,
                    )
                    + "\n",
                    encoding="utf-8",
                )
        except BaseException:
            remove_empty_dirs(created)  # a folder that could not even be started is not left behind
            raise

    def _read_run(self) -> dict | None:
        """The folder's run.json, None when it is unreadable or not what :meth:`open` writes."""
        try:
            old = json.loads((self.root / RUN).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not (
            isinstance(old, dict) and isinstance(old.get("fingerprint"), str) and isinstance(old.get("identity"), dict)
        ):
            return None
        return old

    def _refuse_unexpected(self) -> None:
        """IloraError naming the first shard file that is not one of this plan's (the folder's
        results would not be this evaluation's alone)."""
        planned = {self.path(k).name for k in range(len(self.plan))}
        unexpected = sorted(p.name for p in (self.root / SHARDS).glob("shard-*.parquet") if p.name not in planned)
        if unexpected:
            more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
            raise IloraError(
                f"{self.root / SHARDS}: unexpected file {unexpected[0]}{more}, not one of the "
                f"{len(self.plan)} shards of this evaluation",
                f"delete {'them' if more else 'it'} if not this evaluation's, or pass --restart to "
                "discard every shard in the folder and evaluate from scratch",
            )

    def read(self, index: int) -> tuple[dict, list[dict]] | None:
        """(metadata, records) of a finished shard, None when absent or not this run's / incomplete."""
        pa = _pyarrow()
        path = self.path(index)
        if not path.is_file():
            return None
        try:
            table = pa.parquet.read_table(path)
            meta = json.loads(table.schema.metadata[META_KEY])
        except (OSError, KeyError, TypeError, ValueError, pa.ArrowException):
            return None
        records = table.to_pylist()
        ids = self.expected_ids(index)
        if (
            meta.get("fingerprint") != self.fingerprint
            or meta.get("row_ids") != ids
            or [r["row_id"] for r in records] != ids
        ):
            return None
        return meta, records

    def pending(self) -> list[int]:
        """Shards still to evaluate (absent, unreadable or not matching this run)."""
        return [k for k in range(len(self.plan)) if self.read(k) is None]

    def write(self, index: int, records: list[dict], seconds: float, worker: str = "") -> None:
        pa = _pyarrow()
        ids = self.expected_ids(index)
        if [r["row_id"] for r in records] != ids:
            raise RuntimeError(f"shard {index}: records do not match its row ids")  # a bug
        meta = {"index": index, "row_ids": ids, "fingerprint": self.fingerprint, "seconds": seconds, "worker": worker}
        table = pa.Table.from_pylist(records).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        with atomic_path(self.path(index)) as tmp:
            pa.parquet.write_table(table, tmp)

    def collect(self) -> tuple[list[dict], list[dict]]:
        """(records in eval-set order, shard metadata); every row exactly once, or IloraError."""
        records, metas, missing = [], [], []
        for k in range(len(self.plan)):
            got = self.read(k)
            if got is None:
                missing.append(k)
                continue
            metas.append(got[0])
            records += got[1]
        self._refuse_unexpected()
        if missing:
            raise IloraError(
                f"{self.root}: shards {missing} missing",
                "run the same command again to finish (finished shards are kept)",
            )
        seen = [r["row_id"] for r in records]
        if seen != self.row_ids or len(set(seen)) != len(seen):
            raise IloraError(
                f"{self.root}: the shards do not cover the evaluation set exactly once",
                "pass --restart to evaluate again from scratch",
            )
        return records, metas


def evaluate_pending(
    store: ShardStore,
    evaluate: Callable[[list[int]], list[dict]],
    on_shard: Callable[[int, int], None] | None = None,
    worker: str = "",
) -> int:
    """Evaluate every pending shard in this process with ``evaluate(positions) -> records``; returns
    how many were evaluated."""
    import time

    todo = store.pending()
    for k in todo:
        start, end = store.plan[k]
        t0 = time.perf_counter()
        records = evaluate(list(range(start, end)))
        store.write(k, records, time.perf_counter() - t0, worker)
        if on_shard is not None:
            on_shard(k, end - start)
    return len(todo)
