"""Datasets in the LLaRA layout (LastFM, MovieLens, Steam and anything written the same way).

A dataset folder holds a catalogue and three splits:

- ``id2name.txt`` (``ID::Name`` per line, ids from 0) or a MovieLens-100K ``u.item`` file
  (``id|title|...``, ISO-8859-1, ids from 1). When both are present ``id2name.txt`` is used.
- ``train_data.df``, ``Val_data.df``, ``Test_data.df``: pandas DataFrame pickles with columns
  ``seq`` (the last ``state size`` items, left-aligned, padded at the end), ``len_seq`` (number of
  real items) and ``next`` (the target). MovieLens stores ``(item, rating)`` tuples instead of ids.

The padding id is the number of catalogue items, so catalogue ids must be exactly ``0 .. n-1``.
:meth:`LlaraDataset.split` normalizes every layout to plain integer ids and keeps only rows with
``len_seq >= 3``, as the official loaders do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ilora_export.data.frames import load_frame_pickle
from ilora_export.errors import DataError, IloraError

#: split name -> file name inside the dataset folder
SPLIT_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}

#: rows with fewer real history items are dropped (the official filter)
MIN_LEN_SEQ = 3

ID2NAME_FILE = "id2name.txt"
UITEM_FILE = "u.item"
REQUIRED_COLUMNS = ("seq", "len_seq", "next")

_LAYOUT_HINT = (
    "A dataset folder holds id2name.txt (or a MovieLens u.item) plus train_data.df, "
    "Val_data.df and Test_data.df in the LLaRA layout."
)
_SPLIT_HINT = "Split files are pandas DataFrames saved with DataFrame.to_pickle."


@dataclass(frozen=True)
class Catalogue:
    """Item id -> title, with ids ``0 .. num_items-1``; ``pad_id == num_items``."""

    titles: dict[int, str]
    pad_id: int
    source: Path

    @property
    def num_items(self) -> int:
        return self.pad_id

    def title(self, item_id) -> str:
        try:
            return self.titles[int(item_id)]
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{self.source}: item id {item_id!r} is not in the catalogue ({self.num_items} items)",
                hint="The data files and the catalogue must come from the same dataset.",
            ) from None

    def check_ids(self, ids: Iterable, where: str) -> None:
        """Raise :class:`DataError` naming ``where`` if any id is not a real item.

        Real items are ``0 .. num_items-1``; the padding id is rejected too.
        """
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if arr.size == 0:
            return
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{where}: item ids must be integers, got {arr.ravel()[0]!r}", hint=_LAYOUT_HINT)
        bad = arr[(arr < 0) | (arr >= self.num_items)]
        if bad.size:
            raise DataError(
                f"{where}: {_describe_bad_id(int(bad.ravel()[0]), self.num_items)}",
                hint="The data files and the catalogue must come from the same dataset.",
            )

    def fingerprint(self) -> str:
        """sha256 of the ids and titles, as canonical JSON ``[[id, title], ...]`` by id: the same for
        the same items whichever file (id2name.txt, u.item, catalogue.json) they were read from."""
        import hashlib
        import json

        canonical = json.dumps(sorted(self.titles.items()), ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _describe_bad_id(item_id: int, num_items: int) -> str:
    if item_id == num_items:
        return f"item id {item_id} is the padding id where a real item is expected ({num_items} items)"
    return f"item id {item_id} outside the catalogue ({num_items} items)"


# --------------------------------------------------------------------------------------------
# Catalogue files


_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_TRAILING_ARTICLE = re.compile(r"^(?P<body>.+?), (?P<article>The|A|An)(?P<rest>\s*\([^()]*\))?$")


def parse_movielens_title(raw: str) -> str:
    """A MovieLens ``u.item`` title as the LLaRA code shows it to the LLM.

    The trailing ``(YYYY)`` year is removed and a trailing ``, The`` / ``, A`` / ``, An`` article is
    moved to the front (also when an alternative title in parentheses follows it):
    ``"Usual Suspects, The (1995)"`` -> ``"The Usual Suspects"``.
    """
    title = _YEAR.sub("", raw.strip()).strip()
    match = _TRAILING_ARTICLE.match(title)
    if match:
        title = f"{match['article']} {match['body']}{match['rest'] or ''}"
    return title


def _read_text_lines(path: Path, encoding: str) -> list[str]:
    try:
        return path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid {encoding} text ({err.reason} at byte {err.start})",
            hint=f"Save the catalogue as {encoding}.",
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})", hint=_LAYOUT_HINT) from None


def _parse_id2name(path: Path) -> dict[int, str]:
    titles: dict[int, str] = {}
    for lineno, line in enumerate(_read_text_lines(path, "utf-8-sig"), start=1):
        if not line.strip():
            continue
        item, sep, name = line.partition("::")
        if not sep:
            raise DataError(f"{path}: line {lineno} is not 'ID::Name': {line[:60]!r}", hint=_LAYOUT_HINT)
        _add_title(titles, path, lineno, item, name.strip(), offset=0)
    return titles


def _parse_uitem(path: Path) -> dict[int, str]:
    titles: dict[int, str] = {}
    for lineno, line in enumerate(_read_text_lines(path, "iso-8859-1"), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2:
            raise DataError(
                f"{path}: line {lineno} is not 'id|title|...': {line[:60]!r}",
                hint="u.item is the MovieLens-100K item file.",
            )
        _add_title(titles, path, lineno, fields[0], parse_movielens_title(fields[1]), offset=1)
    return titles


def _add_title(titles: dict[int, str], path: Path, lineno: int, raw_id: str, title: str, offset: int) -> None:
    try:
        item_id = int(raw_id.strip()) - offset
    except ValueError:
        raise DataError(
            f"{path}: line {lineno} has a non-integer item id {raw_id.strip()[:30]!r}", hint=_LAYOUT_HINT
        ) from None
    if item_id < 0:
        raise DataError(f"{path}: line {lineno} has a negative item id {raw_id.strip()!r}", hint=_LAYOUT_HINT)
    if item_id in titles:
        raise DataError(
            f"{path}: line {lineno} repeats item id {raw_id.strip()}", hint="Each item id must appear once."
        )
    if not title:
        raise DataError(
            f"{path}: line {lineno} has an empty title for item id {raw_id.strip()}",
            hint="Every item needs a title: the LLM reads and writes titles.",
        )
    titles[item_id] = title


def load_catalogue(root) -> Catalogue:
    """The catalogue of a dataset folder (``id2name.txt``, else ``u.item``)."""
    root = Path(root)
    id2name, uitem = root / ID2NAME_FILE, root / UITEM_FILE
    if id2name.is_file():
        path, titles = id2name, _parse_id2name(id2name)
    elif uitem.is_file():
        path, titles = uitem, _parse_uitem(uitem)
    else:
        raise DataError(f"{root}: no {ID2NAME_FILE} or {UITEM_FILE} item catalogue", hint=_LAYOUT_HINT)
    if not titles:
        raise DataError(f"{path}: the catalogue is empty", hint=_LAYOUT_HINT)
    n = len(titles)
    if max(titles) != n - 1:
        missing = next(i for i in range(n) if i not in titles)
        first = 1 if path.name == UITEM_FILE else 0
        raise DataError(
            f"{path}: item ids are not contiguous (id {missing + first} is missing, "
            f"{n} items up to id {max(titles) + first})",
            hint="Ids must run from the first id without gaps: the padding id is the number of items.",
        )
    return Catalogue(titles=dict(sorted(titles.items())), pad_id=n, source=path)


# --------------------------------------------------------------------------------------------
# Split files


def read_split_file(path: str | Path) -> pd.DataFrame:
    """Read one LLaRA split file (a pandas DataFrame pickle) without running code from it.

    The file is unpickled with an allowlist of what a DataFrame pickle needs
    (:func:`ilora_export.data.frames.load_frame_pickle`): any other global is refused with
    :class:`~ilora_export.errors.UnsafePickleError` before it runs. This is the only place that reads
    split files.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found", hint=_LAYOUT_HINT)
    try:
        frame = load_frame_pickle(path)
    except IloraError:
        raise
    except Exception as err:  # any other failure to unpickle is a bad file, not a bug here
        raise DataError(
            f"{path}: cannot be read as a pandas pickle ({type(err).__name__}: {err})"[:300], hint=_SPLIT_HINT
        ) from None
    if not isinstance(frame, pd.DataFrame):
        raise DataError(
            f"{path}: holds a value of type {type(frame).__name__}, not a pandas DataFrame", hint=_SPLIT_HINT
        )
    return frame


def _item_id(value, path: Path, row: int, column: str) -> int:
    """An item id from a plain id or an ``(item, rating)`` tuple (MovieLens layout)."""
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) == 0:
            raise DataError(f"{path}: row {row}: empty tuple in column '{column}'", hint=_LAYOUT_HINT)
        value = value[0]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise DataError(f"{path}: row {row}: column '{column}' holds {value!r}, not an item id", hint=_LAYOUT_HINT)
    return int(value)


def _normalize(frame: pd.DataFrame, path: Path, catalogue: Catalogue) -> tuple[pd.DataFrame, int]:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(has {', '.join(repr(str(c)) for c in frame.columns) or 'none'})",
            hint="Split files have columns 'seq', 'len_seq' and 'next'.",
        )
    if len(frame) == 0:
        raise DataError(f"{path}: the split is empty", hint=_LAYOUT_HINT)

    raw_seqs = frame["seq"].tolist()
    lengths = set()
    for row, seq in enumerate(raw_seqs):
        if not isinstance(seq, (list, tuple, np.ndarray)):
            raise DataError(
                f"{path}: row {row}: 'seq' holds a value of type {type(seq).__name__}, not a list of items",
                hint=_LAYOUT_HINT,
            )
        lengths.add(len(seq))
    if len(lengths) != 1:
        raise DataError(
            f"{path}: 'seq' lists have different lengths ({', '.join(map(str, sorted(lengths)))})",
            hint="Every 'seq' holds the last state-size items, padded to the same length.",
        )
    state_size = lengths.pop()

    try:
        len_seq = pd.to_numeric(frame["len_seq"], errors="raise").to_numpy()
    except (ValueError, TypeError):
        raise DataError(f"{path}: column 'len_seq' is not numeric", hint=_LAYOUT_HINT) from None
    if not np.all(np.mod(len_seq, 1) == 0):
        raise DataError(f"{path}: column 'len_seq' holds non-integer values", hint=_LAYOUT_HINT)
    len_seq = len_seq.astype(np.int64)

    keep = np.flatnonzero(len_seq >= MIN_LEN_SEQ)
    if keep.size == 0:
        raise DataError(
            f"{path}: no row has len_seq >= {MIN_LEN_SEQ} ({len(frame)} rows before filtering)",
            hint="The official protocol keeps only users with at least 3 history items.",
        )
    too_long = keep[len_seq[keep] > state_size]
    if too_long.size:
        row = int(too_long[0])
        raise DataError(
            f"{path}: row {row}: len_seq {len_seq[row]} is longer than 'seq' ({state_size} items)", hint=_LAYOUT_HINT
        )

    raw_next = frame["next"].tolist()
    pad = catalogue.pad_id
    seqs, nexts = [], []
    for row in keep.tolist():
        n = int(len_seq[row])
        history = [_item_id(v, path, row, "seq") for v in raw_seqs[row][:n]]
        target = _item_id(raw_next[row], path, row, "next")
        for item in (*history, target):
            if not 0 <= item < catalogue.num_items:
                raise DataError(
                    f"{path}: row {row}: {_describe_bad_id(item, catalogue.num_items)}",
                    hint=f"The split does not match the catalogue {catalogue.source}.",
                )
        seqs.append(history + [pad] * (state_size - n))
        nexts.append(target)

    out = pd.DataFrame(
        {
            "seq": seqs,
            "len_seq": len_seq[keep],
            "next": np.asarray(nexts, dtype=np.int64),
            "row_id": keep.astype(np.int64),
        }
    )
    return out, state_size


@dataclass
class LlaraDataset:
    """A dataset folder in the LLaRA layout. Splits are read on first use and cached."""

    root: Path
    catalogue: Catalogue
    _splits: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _state_size: int | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The dataset folder's name (``lastfm``)."""
        return Path(self.root).resolve().name

    def split_path(self, name: str) -> Path:
        if name not in SPLIT_FILES:
            raise DataError(f"unknown split {name!r}", hint=f"Use one of: {', '.join(SPLIT_FILES)}.")
        return Path(self.root) / SPLIT_FILES[name]

    def split(self, name: str) -> pd.DataFrame:
        """Rows with ``len_seq >= 3``: columns ``seq`` (list[int], padded with ``pad_id`` to the state
        size), ``len_seq``, ``next`` and ``row_id`` (the row's position in the file). Cached per name:
        treat the frame as read-only."""
        path = self.split_path(name)
        if name not in self._splits:
            frame, state_size = _normalize(read_split_file(path), path, self.catalogue)
            if self._state_size is not None and state_size != self._state_size:
                raise DataError(
                    f"{path}: 'seq' holds {state_size} items, other splits hold {self._state_size}",
                    hint="All splits of a dataset use the same state size.",
                )
            self._state_size = state_size
            self._splits[name] = frame
        return self._splits[name]

    def seq_len(self) -> int:
        """The state size: length of every ``seq`` (10 for the LLaRA datasets)."""
        if self._state_size is None:
            present = [n for n, f in SPLIT_FILES.items() if (Path(self.root) / f).is_file()]
            if not present:
                raise DataError(f"{self.root}: no split file ({', '.join(SPLIT_FILES.values())})", hint=_LAYOUT_HINT)
            self.split(min(present, key=lambda n: (Path(self.root) / SPLIT_FILES[n]).stat().st_size))
        return self._state_size


def load_dataset(root) -> LlaraDataset:
    """Open a LLaRA-layout dataset folder: reads the catalogue now, the splits on first use."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found", hint=_LAYOUT_HINT)
    return LlaraDataset(root=root, catalogue=load_catalogue(root))


def read_catalogue(file: Path) -> Catalogue:
    """A ``catalogue.json`` (as a checkpoint or an export holds it) as a Catalogue."""
    cat = json.loads(Path(file).read_text(encoding="utf-8"))
    return Catalogue(titles=dict(enumerate(cat["titles"])), pad_id=cat["pad_id"], source=Path(file))
