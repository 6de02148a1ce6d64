"""The materialized evaluation set: each row's 20 candidates, fixed once and stored in a file.

The official code re-samples the 19 negative candidates on every load, so two runs never score the
same question. Here each row's candidates are drawn from ``np.random.default_rng([seed, row_id])``
(independent of the other rows), written to a JSON Lines file, and every backend and rerun reads
the same file.

File format (UTF-8, ``"\\n"`` line ends, keys sorted, no spaces): a header object
``{"format": "ilora-export/evalset", "version": 1, "dataset", "split", "seed", "num_items",
"pad_id", "num_candidates", "num_rows", "fingerprint"}``, then one object per row
``{"row_id", "seq", "len_seq", "target", "candidates"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ilora_export.data.llara import (
    Catalogue,
    LlaraDataset,
    _describe_bad_id,
    load_dataset,
)
from ilora_export.errors import DataError
from ilora_export.fileio import atomic_path, sha256_file

FORMAT = "ilora-export/evalset"
VERSION = 1
NUM_CANDIDATES = 20

_HEADER_INTS = ("version", "seed", "num_items", "pad_id", "num_candidates", "num_rows")
_HEADER_STRS = ("format", "dataset", "split", "fingerprint")
_ROW_KEYS = ("row_id", "seq", "len_seq", "target", "candidates")
_REBUILD_HINT = "Rebuild it with `ilora-export evalset`."


@dataclass(frozen=True)
class EvalRow:
    row_id: int  # the row's position in the split file
    seq: tuple[int, ...]  # padded history, as in the split
    len_seq: int
    target: int
    candidates: tuple[int, ...]  # target + sampled negatives, shuffled

    @property
    def history(self) -> tuple[int, ...]:
        return self.seq[: self.len_seq]


@dataclass
class EvalSet:
    rows: list[EvalRow]
    split: str
    seed: int
    num_items: int
    pad_id: int
    dataset: str  # the dataset folder's name
    fingerprint: str  # sha256 of the split file the rows come from
    num_candidates: int = NUM_CANDIDATES

    def __len__(self) -> int:
        return len(self.rows)


def sample_candidates(
    history, target: int, num_items: int, rng: np.random.Generator, num_candidates: int = NUM_CANDIDATES
) -> tuple[int, ...]:
    """``target`` plus ``num_candidates - 1`` items drawn uniformly without replacement from the
    items that are neither in ``history`` nor the target, in shuffled order."""
    allowed = np.ones(num_items, dtype=bool)
    allowed[np.asarray(history, dtype=np.int64)] = False
    allowed[target] = False
    pool = np.flatnonzero(allowed)
    if pool.size < num_candidates - 1:
        raise DataError(
            f"only {pool.size} items are left to sample {num_candidates - 1} negatives from",
            hint="The catalogue is too small for this many candidates.",
        )
    candidates = np.append(rng.choice(pool, size=num_candidates - 1, replace=False), target)
    rng.shuffle(candidates)
    return tuple(int(c) for c in candidates)


def build_eval_set(dataset: LlaraDataset, split: str, seed: int = 0, num_candidates: int = NUM_CANDIDATES) -> EvalSet:
    """Candidates for every row of ``split`` (rows with ``len_seq >= 3``)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}", hint="Use e.g. --seed 0.")
    if num_candidates < 1:
        raise DataError(f"num_candidates must be at least 1, got {num_candidates}")
    frame = dataset.split(split)
    num_items = dataset.catalogue.num_items
    rows = []
    for seq, len_seq, target, row_id in zip(frame["seq"], frame["len_seq"], frame["next"], frame["row_id"]):
        row_id, len_seq, target = int(row_id), int(len_seq), int(target)
        rng = np.random.default_rng([int(seed), row_id])
        try:
            candidates = sample_candidates(seq[:len_seq], target, num_items, rng, num_candidates)
        except DataError as err:
            raise DataError(f"{dataset.split_path(split)}: row {row_id}: {err.message}", hint=err.hint) from None
        rows.append(
            EvalRow(
                row_id=row_id, seq=tuple(int(s) for s in seq), len_seq=len_seq, target=target, candidates=candidates
            )
        )
    return EvalSet(
        rows=rows,
        split=split,
        seed=int(seed),
        num_items=num_items,
        pad_id=dataset.catalogue.pad_id,
        dataset=dataset.name,
        fingerprint=sha256_file(dataset.split_path(split)),
        num_candidates=num_candidates,
    )


# --------------------------------------------------------------------------------------------
# File I/O


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def eval_set_bytes(evalset: EvalSet) -> bytes:
    """``evalset`` serialized as JSON Lines (what :func:`write_eval_set` writes; deterministic)."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": evalset.dataset,
        "split": evalset.split,
        "seed": evalset.seed,
        "num_items": evalset.num_items,
        "pad_id": evalset.pad_id,
        "num_candidates": evalset.num_candidates,
        "num_rows": len(evalset.rows),
        "fingerprint": evalset.fingerprint,
    }
    lines = [_dumps(header)]
    for row in evalset.rows:
        lines.append(
            _dumps(
                {
                    "row_id": row.row_id,
                    "seq": list(row.seq),
                    "len_seq": row.len_seq,
                    "target": row.target,
                    "candidates": list(row.candidates),
                }
            )
        )
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_eval_set(evalset: EvalSet, path) -> Path:
    """Write ``evalset`` as JSON Lines, atomically (a temporary file, then ``os.replace``)."""
    path = Path(path)
    data = eval_set_bytes(evalset)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        raise DataError(
            f"{path}: cannot write the evaluation set ({err.strerror or err})",
            hint="Choose a writable output path with -o.",
        ) from None
    return path


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def _parse_header(path: Path, line: str) -> dict:
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: not an evaluation set (line 1 is not an {FORMAT} header)", hint=_REBUILD_HINT)
    if header.get("version") != VERSION:
        raise DataError(
            f"{path}: evaluation set version {header.get('version')!r} is not supported (expected {VERSION})",
            hint=_REBUILD_HINT,
        )
    for key in _HEADER_INTS:
        if not _is_int(header.get(key)):
            raise DataError(f"{path}: header field '{key}' is missing or not an integer", hint=_REBUILD_HINT)
    for key in _HEADER_STRS:
        if not isinstance(header.get(key), str):
            raise DataError(f"{path}: header field '{key}' is missing or not a string", hint=_REBUILD_HINT)
    return header


def _parse_row(path: Path, lineno: int, line: str, header: dict, state_size: int | None) -> EvalRow:
    where = f"{path}: line {lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: corrupt JSON ({err.msg})", hint=_REBUILD_HINT) from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a row object", hint=_REBUILD_HINT)
    for key in _ROW_KEYS:
        ok = _is_int_list(obj.get(key)) if key in ("seq", "candidates") else _is_int(obj.get(key))
        if not ok:
            raise DataError(f"{where}: field '{key}' is missing or malformed", hint=_REBUILD_HINT)
    where = f"{where} (row {obj['row_id']})"
    seq, len_seq, target, candidates = obj["seq"], obj["len_seq"], obj["target"], obj["candidates"]
    num_items, pad_id, k = header["num_items"], header["pad_id"], header["num_candidates"]
    if state_size is not None and len(seq) != state_size:
        raise DataError(f"{where}: seq has {len(seq)} items, earlier rows have {state_size}", hint=_REBUILD_HINT)
    if not 1 <= len_seq <= len(seq):
        raise DataError(f"{where}: len_seq {len_seq} does not fit a seq of {len(seq)} items", hint=_REBUILD_HINT)
    if any(item != pad_id for item in seq[len_seq:]):
        raise DataError(f"{where}: seq is not padded with the padding id {pad_id}", hint=_REBUILD_HINT)
    if len(candidates) != k:
        raise DataError(f"{where}: {len(candidates)} candidates, expected {k}", hint=_REBUILD_HINT)
    if len(set(candidates)) != k:
        raise DataError(f"{where}: repeated candidates", hint=_REBUILD_HINT)
    if target not in candidates:
        raise DataError(f"{where}: the target {target} is not among the candidates", hint=_REBUILD_HINT)
    for item in (*seq[:len_seq], *candidates):
        if not 0 <= item < num_items:
            raise DataError(f"{where}: {_describe_bad_id(item, num_items)}", hint=_REBUILD_HINT)
    return EvalRow(row_id=obj["row_id"], seq=tuple(seq), len_seq=len_seq, target=target, candidates=tuple(candidates))


def read_eval_set(path, catalogue: Catalogue | None = None) -> EvalSet:
    """Read and validate an evaluation set file; with ``catalogue``, also check it belongs to it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: evaluation set not found", hint="Build it with `ilora-export evalset`.") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text", hint=_REBUILD_HINT) from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})", hint=_REBUILD_HINT) from None
    lines = text.split("\n")
    if not text or lines[-1] != "":
        raise DataError(f"{path}: truncated (the file does not end with a line end)", hint=_REBUILD_HINT)
    lines.pop()
    header = _parse_header(path, lines[0])
    if header["pad_id"] != header["num_items"]:
        raise DataError(
            f"{path}: pad_id {header['pad_id']} differs from num_items {header['num_items']}", hint=_REBUILD_HINT
        )
    if catalogue is not None and header["num_items"] != catalogue.num_items:
        raise DataError(
            f"{path}: built for a catalogue of {header['num_items']} items, "
            f"{catalogue.source} has {catalogue.num_items}",
            hint="Use the evaluation set built from this dataset. " + _REBUILD_HINT,
        )
    rows: list[EvalRow] = []
    seen: set[int] = set()
    for lineno, line in enumerate(lines[1:], start=2):
        row = _parse_row(path, lineno, line, header, len(rows[0].seq) if rows else None)
        if row.row_id in seen:
            raise DataError(f"{path}: line {lineno}: row {row.row_id} appears twice", hint=_REBUILD_HINT)
        seen.add(row.row_id)
        rows.append(row)
    if len(rows) != header["num_rows"]:
        raise DataError(
            f"{path}: truncated ({len(rows)} rows, the header says {header['num_rows']})", hint=_REBUILD_HINT
        )
    if not rows:
        raise DataError(f"{path}: the evaluation set has no rows", hint=_REBUILD_HINT)
    return EvalSet(
        rows=rows,
        split=header["split"],
        seed=header["seed"],
        num_items=header["num_items"],
        pad_id=header["pad_id"],
        dataset=header["dataset"],
        fingerprint=header["fingerprint"],
        num_candidates=header["num_candidates"],
    )


def load_or_build_eval_set(
    dataset: LlaraDataset, split: str, seed: int, path: Path | None, num_candidates: int = NUM_CANDIDATES
) -> EvalSet:
    """The evaluation set at ``path`` if it exists (checked against ``dataset``, ``split``, ``seed``),
    else build it and, when ``path`` is given, write it there."""
    if path is None:
        return build_eval_set(dataset, split, seed, num_candidates)
    path = Path(path)
    if not path.exists():
        evalset = build_eval_set(dataset, split, seed, num_candidates)
        write_eval_set(evalset, path)
        return evalset
    evalset = read_eval_set(path, dataset.catalogue)
    stale_hint = "Delete the file to rebuild it, or pass another evaluation set path."
    for key, want in (("split", split), ("seed", seed), ("num_candidates", num_candidates)):
        have = getattr(evalset, key)
        if have != want:
            raise DataError(f"{path}: built with {key} {have!r}, not {want!r}", hint=stale_hint)
    split_file = dataset.split_path(split)
    if not split_file.is_file():
        raise DataError(
            f"{split_file}: split file not found (needed to check {path})",
            hint="Point --data at the dataset the evaluation set was built from.",
        )
    if evalset.fingerprint != sha256_file(split_file):
        raise DataError(f"{path}: built from another version of {split_file} (sha256 differs)", hint=stale_hint)
    return evalset


# --------------------------------------------------------------------------------------------
# Does an evaluation set fit a model?


def check_catalogue(
    dataset: Catalogue, model: Catalogue, *, allow_mismatch: bool = False, override: str | None = None
) -> dict:
    """Refuse a dataset whose catalogue is not the model's (``catalogue.json`` of its checkpoint or
    export): prompts and answers use the model's titles, so other titles would be judged against
    names the dataset does not have. Item counts must match (the padding id is the item count);
    with ``allow_mismatch`` differing titles are allowed, and reported. ``override`` names the option
    that allows them, for the hint.

    Returns what a summary records: ``catalogue_sha256`` (the model's
    :meth:`~ilora_export.data.llara.Catalogue.fingerprint`) and, for an allowed mismatch,
    ``catalogue_mismatch``.
    """
    if dataset.num_items != model.num_items:
        raise DataError(
            f"{dataset.source}: catalogue has {dataset.num_items} items, the model's "
            f"({model.source}) has {model.num_items}",
            hint="Evaluate with the dataset the model was trained on: item ids and the padding id must be the model's.",
        )
    have, want = dataset.fingerprint(), model.fingerprint()
    if have == want:
        return {"catalogue_sha256": want}
    differ = [i for i in sorted(model.titles) if dataset.titles[i] != model.titles[i]]
    first = differ[0]
    if not allow_mismatch:
        raise DataError(
            f"{dataset.source}: catalogue differs from the model's ({model.source}) in {len(differ)} "
            f"of {model.num_items} items, first at item id {first}: {dataset.titles[first]!r} here, "
            f"{model.titles[first]!r} in the model",
            hint="Evaluate with the dataset the model was trained on"
            + (f", or pass {override} to evaluate with the model's titles." if override else "."),
        )
    return {
        "catalogue_sha256": want,
        "catalogue_mismatch": {
            "allowed": True,
            "items_differing": len(differ),
            "first_item_id": first,
            "dataset_title": dataset.titles[first],
            "model_title": model.titles[first],
            "dataset_sha256": have,
        },
    }


def check_history_length(evalset: EvalSet, state_size: int, source) -> None:
    """Refuse an evaluation set whose histories (``seq``, padded) do not hold the model's state size:
    SASRec has exactly that many positions. ``source`` names the file the rows come from."""
    length = len(evalset.rows[0].seq) if evalset.rows else state_size
    if length != state_size:
        raise DataError(
            f"{source}: histories hold {length} items ('seq' length), the model takes {state_size} "
            "(its SASRec state size)",
            hint="Evaluate with the dataset the model was trained on, or one written with the same state size.",
        )


def export_eval_set(data_dir, split: str = "test", seed: int = 0, output=None) -> tuple[EvalSet, Path]:
    """Build the evaluation set of ``data_dir``'s ``split`` and write it.

    ``output`` is a file path, an existing folder (the default file name goes inside it), or None
    (``evalset-<dataset>-<split>-seed<seed>.jsonl`` in the current folder).
    """
    dataset = load_dataset(data_dir)
    evalset = build_eval_set(dataset, split, seed)
    default_name = f"evalset-{evalset.dataset}-{split}-seed{seed}.jsonl"
    if output is None:
        path = Path(default_name)
    else:
        path = Path(output)
        if path.is_dir():
            path = path / default_name
    return evalset, write_eval_set(evalset, path)
