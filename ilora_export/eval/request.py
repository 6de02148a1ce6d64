"""What to evaluate and how: one :class:`EvalRequest`, validated once when built.

The request is a plain, frozen, picklable value: ``run_eval`` takes it whole, and the Ray actors
receive it as it is. :meth:`EvalRequest.identity` says what the answers depend on; it fingerprints a
sharded output folder (``eval.shards``), so a rerun resumes only an evaluation that gives the same answers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ilora_export.artifacts.kinds import MODEL_INDEXES, folder_kind
from ilora_export.data.evalset import EvalSet, eval_set_bytes
from ilora_export.errors import IloraError
from ilora_export.fileio import sha256_file
from ilora_export.runtime.load import BACKENDS

DEVICES = ("cpu", "cuda")
DEFAULT_SHARD_ROWS = 64

PathLike = str | os.PathLike


@dataclass(frozen=True)
class EvalRequest:
    """One evaluation of ``target`` on ``split`` of the dataset in ``data_dir``.

    ``target`` is a checkpoint (``backend="torch"``), an export (``"ort"``) or an engines folder
    (``"trt"``). ``limit`` keeps the first rows of the evaluation set, built from ``seed`` or read
    from ``eval_set``. With ``output`` the results are written per shard of ``shard_rows`` rows, so a
    killed run resumes (``restart`` discards finished shards; ``replace_other`` only those of another
    evaluation, for a folder the caller owns); ``ray`` evaluates the shards on Ray Data actors (local
    when no ``address``), ``num_workers`` of them. ``allow_catalogue_mismatch`` evaluates a dataset
    whose titles differ from the model's with the model's titles.

    Raises IloraError, naming every problem, when the fields do not make an evaluation.
    """

    target: PathLike
    data_dir: PathLike
    split: str = "test"
    backend: str = "torch"
    device: str = "cpu"
    batch_size: int = 8
    limit: int | None = None
    seed: int = 0
    eval_set: PathLike | None = None
    prompt_file: PathLike | None = None
    base_model: str | None = None
    threads: int | None = None
    bank: PathLike | None = None
    output: PathLike | None = None
    shard_rows: int = DEFAULT_SHARD_ROWS  # None is taken as the default
    restart: bool = False
    replace_other: bool = False
    ray: bool = False
    address: str | None = None
    num_workers: int | None = None
    allow_catalogue_mismatch: bool = False

    def __post_init__(self):
        if self.shard_rows is None:
            object.__setattr__(self, "shard_rows", DEFAULT_SHARD_ROWS)
        problems = self._problems()
        if len(problems) == 1:
            raise IloraError(*problems[0])
        if problems:
            raise IloraError(
                f"{len(problems)} problems with this evaluation:\n"
                + "\n".join(f"  - {message}" for message, _ in problems),
                "; ".join(hint for _, hint in problems),
            )

    def _problems(self) -> list[tuple[str, str]]:
        """(message, hint) for every field, or combination of fields, that makes no evaluation."""
        problems = []
        if self.backend not in BACKENDS:
            problems.append(
                (
                    f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}",
                    "torch for a checkpoint, ort for an export, trt for an engines folder",
                )
            )
        if self.device not in DEVICES:
            problems.append(
                (f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}", "--device cpu runs anywhere")
            )
        for name, flag in (
            ("batch_size", "--batch-size"),
            ("limit", "--limit"),
            ("threads", "--threads"),
            ("num_workers", "--num-workers"),
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append((f"{flag} must be >= 1, got {value}", f"leave {flag} out for its default"))
        if self.shard_rows < 1:
            problems.append((f"--shard-rows must be >= 1, got {self.shard_rows}", "64 is a good default"))
        if self.ray and self.output is None:
            problems.append(("--ray writes its results per shard into an output folder", "add -o OUTPUT_DIR"))
        if self.ray and self.backend != "ort":
            problems.append((f"--ray runs the ort backend (not {self.backend})", "export first and pass --backend ort"))
        return problems

    def identity(self, evalset: EvalSet) -> dict:
        """What the answers on ``evalset`` (this request's evaluation set) depend on: the model folder
        and expert bank (sha256 of their files), the backend and device, the evaluation set's and prompt
        file's sha256, the shard size. Threads, workers, cluster address, output folder, restart and
        batch size (answers do not depend on the batching) leave it unchanged."""
        return {
            "model": target_identity(self.target, self.bank),
            "backend": self.backend,
            "device": self.device,
            "evalset_sha256": hashlib.sha256(eval_set_bytes(evalset)).hexdigest(),
            "shard_rows": self.shard_rows,
            "prompt_file_sha256": sha256_file(self.prompt_file) if self.prompt_file else None,
        }

    def resolved(self) -> EvalRequest:
        """The same request with every path absolute, for processes that may start in another folder."""
        return replace(
            self,
            **{
                name: str(Path(getattr(self, name)).resolve())
                for name in _PATH_FIELDS
                if getattr(self, name) is not None
            },
        )


_PATH_FIELDS = ("target", "data_dir", "eval_set", "prompt_file", "bank", "output")  # base_model may be a name


def target_identity(target, bank=None) -> dict:
    """What answers depend on in a model folder: the sha256 of its index file (which hashes the rest)."""
    target = Path(target)
    index = MODEL_INDEXES.get(folder_kind(target))
    if index is None:
        raise IloraError(
            f"{target}: neither a checkpoint, an export nor an engines folder",
            "pass the folder written by finetune, onnx or trt",
        )
    ident = {"target": str(target.resolve()), "index": index, "sha256": sha256_file(target / index)}
    if bank is not None:
        ident["bank_sha256"] = sha256_file(bank)
    return ident
