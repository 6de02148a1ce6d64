"""Tiny synthetic datasets in the LLaRA layout, for tests and demos.

Titles look like ``"Item Alpha 03"``: distinct even when lower-cased, and the zero-padded number
makes every ``"Item "`` prefix unique, so no title is a substring of another (answer parsing relies
on that). Each history is a run of consecutive ids and the target is the item after the last one
(modulo ``num_items``), so a model can learn the pattern.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ilora_export.data.llara import ID2NAME_FILE, MIN_LEN_SEQ, SPLIT_FILES, UITEM_FILE

_WORDS = (
    "Alpha",
    "Bravo",
    "Charlie",
    "Delta",
    "Echo",
    "Foxtrot",
    "Golf",
    "Hotel",
    "India",
    "Juliett",
    "Kilo",
    "Lima",
    "Mike",
    "November",
    "Oscar",
    "Papa",
    "Quebec",
    "Romeo",
    "Sierra",
    "Tango",
    "Uniform",
    "Victor",
    "Whiskey",
    "Xray",
    "Yankee",
    "Zulu",
)

#: every how many train rows one is too short for the official filter (len_seq 1 or 2)
SHORT_TRAIN_EVERY = 10


def synthetic_titles(num_items: int) -> list[str]:
    width = len(str(max(num_items - 1, 0)))
    return [f"Item {_WORDS[i % len(_WORDS)]} {i:0{width}d}" for i in range(num_items)]


def write_synthetic_dataset(
    root, num_items: int = 50, num_rows=(200, 12, 12), seq_len: int = 10, layout: str = "id2name", seed: int = 0
) -> Path:
    """Write a small valid dataset folder and return its path.

    ``num_rows`` gives the rows of the train, valid and test files. Valid and test rows all have
    ``len_seq >= 3``; one train row in ten is shorter (dropped by the loader), like the real data.
    ``layout="id2name"`` writes ``id2name.txt`` and plain ids (LastFM/Steam);
    ``layout="movielens"`` writes a ``u.item`` (ids from 1, titles with a year) and ``(item, rating)``
    tuples. Both layouts load to the same catalogue and splits.
    """
    if layout not in ("id2name", "movielens"):
        raise ValueError(f"layout must be 'id2name' or 'movielens', not {layout!r}")
    if seq_len < MIN_LEN_SEQ:
        raise ValueError(f"seq_len must be at least {MIN_LEN_SEQ}")
    if num_items < seq_len + 20:
        raise ValueError(f"num_items must be at least seq_len + 20 = {seq_len + 20} to sample 19 negatives")
    if len(num_rows) != 3 or min(num_rows) < 1:
        raise ValueError("num_rows gives a positive row count for train, valid and test")

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    titles = synthetic_titles(num_items)
    if layout == "id2name":
        text = "".join(f"{i}::{title}\n" for i, title in enumerate(titles))
        (root / ID2NAME_FILE).write_text(text, encoding="utf-8")
    else:
        genres = "|".join("0" * 19)
        text = "".join(
            f"{i + 1}|{title} (1995)|01-Jan-1995||http://example.invalid/{i + 1}|{genres}\n"
            for i, title in enumerate(titles)
        )
        (root / UITEM_FILE).write_text(text, encoding="iso-8859-1")

    rng = np.random.default_rng(seed)
    ratings_rng = np.random.default_rng([seed, 1])  # separate, so both layouts hold the same items
    pad = num_items
    for (split, filename), count in zip(SPLIT_FILES.items(), num_rows):
        seqs, lens, nexts = [], [], []
        for i in range(count):
            short = split == "train" and i % SHORT_TRAIN_EVERY == SHORT_TRAIN_EVERY - 1
            n = int(rng.integers(1, MIN_LEN_SEQ)) if short else int(rng.integers(MIN_LEN_SEQ, seq_len + 1))
            start = int(rng.integers(num_items))
            history = [(start + j) % num_items for j in range(n)]
            target = (start + n) % num_items
            if layout == "id2name":
                seqs.append(history + [pad] * (seq_len - n))
                nexts.append(np.int64(target))
            else:
                ratings = ratings_rng.integers(1, 6, size=n + 1).tolist()
                seqs.append([(item, r) for item, r in zip(history, ratings)] + [(pad, 0)] * (seq_len - n))
                nexts.append((target, ratings[-1]))
            lens.append(n)
        frame = pd.DataFrame({"seq": seqs, "len_seq": np.asarray(lens, dtype=np.int64), "next": nexts})
        frame.to_pickle(root / filename)
    return root
