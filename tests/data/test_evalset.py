from __future__ import annotations

import json

import numpy as np
import pytest

from ilora_export.data.evalset import (
    EvalSet,
    build_eval_set,
    load_or_build_eval_set,
    read_eval_set,
    sample_candidates,
    write_eval_set,
)
from ilora_export.data.llara import load_dataset
from ilora_export.data.synthetic import write_synthetic_dataset
from ilora_export.errors import DataError
from ilora_export.fileio import sha256_file


@pytest.fixture(scope="module")
def toy(synthetic_dir):
    return load_dataset(synthetic_dir)


@pytest.fixture
def evalset_file(toy, tmp_path):
    return write_eval_set(build_eval_set(toy, "test", seed=0), tmp_path / "test.jsonl")


def _edit_row(path, lineno, **changes):
    lines = path.read_text(encoding="utf-8").split("\n")
    row = json.loads(lines[lineno - 1])
    row.update(changes)
    lines[lineno - 1] = json.dumps(row)
    path.write_text("\n".join(lines), encoding="utf-8")


def test_candidates_follow_the_protocol(toy):
    evalset = build_eval_set(toy, "train", seed=0)
    split = toy.split("train")
    assert [r.row_id for r in evalset.rows] == split["row_id"].tolist()
    positions = set()
    for row, seq, nxt in zip(evalset.rows, split["seq"], split["next"]):
        assert row.seq == tuple(seq) and row.target == nxt
        assert len(row.candidates) == 20 and len(set(row.candidates)) == 20
        assert row.target in row.candidates
        assert not set(row.history) & set(row.candidates)
        assert all(0 <= c < 50 for c in row.candidates)
        positions.add(row.candidates.index(row.target))
    assert len(positions) > 10  # shuffled, not always in one place
    header = (evalset.split, evalset.seed, evalset.num_items, evalset.pad_id, evalset.dataset)
    assert header == ("train", 0, 50, 50, "toy")
    assert evalset.fingerprint == sha256_file(toy.split_path("train"))


def test_negatives_are_spread_over_the_catalogue(toy):
    counts = np.zeros(50, dtype=int)
    for row in build_eval_set(toy, "train", seed=3).rows:
        for c in row.candidates:
            if c != row.target:
                counts[c] += 1
    # 180 rows x 19 negatives over 50 items: every item is drawn, none dominates
    assert counts.min() > 20 and counts.max() < 130


def test_each_row_seeded_on_its_own(toy):
    evalset = build_eval_set(toy, "test", seed=7)
    for row in evalset.rows:
        rng = np.random.default_rng([7, row.row_id])
        assert row.candidates == sample_candidates(row.history, row.target, 50, rng)


def test_same_seed_gives_identical_bytes(synthetic_dir, tmp_path):
    a = write_eval_set(build_eval_set(load_dataset(synthetic_dir), "test", seed=0), tmp_path / "a.jsonl")
    b = write_eval_set(build_eval_set(load_dataset(synthetic_dir), "test", seed=0), tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]  # no temporary files left


def test_other_seed_gives_other_candidates(toy):
    a, b = build_eval_set(toy, "test", seed=0), build_eval_set(toy, "test", seed=1)
    assert [r.target for r in a.rows] == [r.target for r in b.rows]
    assert sum(ra.candidates != rb.candidates for ra, rb in zip(a.rows, b.rows)) == len(a.rows)


def test_file_format_and_round_trip(toy, evalset_file):
    raw = evalset_file.read_bytes()
    lines = raw.decode("utf-8").split("\n")
    assert raw.endswith(b"\n") and b"\r" not in raw and b" " not in raw
    header = json.loads(lines[0])
    assert header["format"] == "ilora-export/evalset" and header["num_rows"] == 12 and header["num_candidates"] == 20
    assert list(json.loads(lines[1])) == sorted(json.loads(lines[1]))
    back = read_eval_set(evalset_file, toy.catalogue)
    assert back == build_eval_set(toy, "test", seed=0)
    assert len(back) == 12


def test_write_overwrites_and_creates_folders(toy, tmp_path):
    path = tmp_path / "deep" / "er" / "e.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("old", encoding="utf-8")
    write_eval_set(build_eval_set(toy, "valid", seed=0), path)
    assert read_eval_set(path).split == "valid"


def test_truncated_file(evalset_file):
    data = evalset_file.read_bytes()
    evalset_file.write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match="truncated"):
        read_eval_set(evalset_file)


def test_missing_rows(evalset_file):
    lines = evalset_file.read_text(encoding="utf-8").split("\n")
    evalset_file.write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"truncated \(11 rows, the header says 12\)"):
        read_eval_set(evalset_file)


def test_corrupt_json_names_line(evalset_file):
    lines = evalset_file.read_text(encoding="utf-8").split("\n")
    lines[3] = lines[3][:20] + "}}" + lines[3][20:]
    evalset_file.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=r"test.jsonl: line 4: corrupt JSON"):
        read_eval_set(evalset_file)


def test_no_header(evalset_file):
    lines = evalset_file.read_text(encoding="utf-8").split("\n")
    evalset_file.write_text("\n".join(lines[1:]), encoding="utf-8")
    with pytest.raises(DataError, match="not an evaluation set"):
        read_eval_set(evalset_file)


def test_empty_or_missing_file(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match="empty.jsonl: truncated"):
        read_eval_set(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="evaluation set not found"):
        read_eval_set(tmp_path / "none.jsonl")


def test_wrong_candidate_count(evalset_file):
    row = json.loads(evalset_file.read_text(encoding="utf-8").split("\n")[2])
    cands = [c for c in row["candidates"] if c != row["target"]][:18] + [row["target"]]
    _edit_row(evalset_file, 3, candidates=cands)
    with pytest.raises(DataError, match=r"line 3 \(row \d+\): 19 candidates, expected 20"):
        read_eval_set(evalset_file)


def test_target_not_among_candidates(evalset_file):
    _edit_row(evalset_file, 2, target=49, candidates=list(range(20)), seq=[30, 31, 32] + [50] * 7, len_seq=3)
    with pytest.raises(DataError, match="the target 49 is not among the candidates"):
        read_eval_set(evalset_file)


def test_repeated_candidates(evalset_file):
    _edit_row(evalset_file, 2, target=0, candidates=[0] * 20)
    with pytest.raises(DataError, match="repeated candidates"):
        read_eval_set(evalset_file)


def test_id_outside_catalogue(toy, evalset_file):
    row = json.loads(evalset_file.read_text(encoding="utf-8").split("\n")[1])
    cands = list(row["candidates"])
    cands[next(i for i, c in enumerate(cands) if c != row["target"])] = 5000
    _edit_row(evalset_file, 2, candidates=cands)
    expected = r"test.jsonl: line 2 \(row 0\): item id 5000 outside the catalogue \(50 items\)"
    with pytest.raises(DataError, match=expected):
        read_eval_set(evalset_file, toy.catalogue)


def test_other_catalogue(evalset_file, tmp_path):
    other = load_dataset(write_synthetic_dataset(tmp_path / "big", num_items=80, num_rows=(5, 3, 3)))
    with pytest.raises(DataError, match="built for a catalogue of 50 items, .* has 80"):
        read_eval_set(evalset_file, other.catalogue)


def test_bad_padding(evalset_file):
    lines = evalset_file.read_text(encoding="utf-8").split("\n")
    lineno, row = next(
        (i, json.loads(line)) for i, line in enumerate(lines[1:-1], start=2) if json.loads(line)["len_seq"] < 10
    )
    _edit_row(evalset_file, lineno, seq=row["seq"][: row["len_seq"]] + [7] * (10 - row["len_seq"]))
    with pytest.raises(DataError, match="not padded with the padding id 50"):
        read_eval_set(evalset_file)


def test_build_errors(toy, tmp_path):
    with pytest.raises(DataError, match="seed must be a non-negative integer"):
        build_eval_set(toy, "test", seed=-1)
    with pytest.raises(DataError, match=r"Test_data.df: row \d+: only \d+ items are left to sample 49 negatives"):
        build_eval_set(toy, "test", seed=0, num_candidates=50)


def test_load_or_build(synthetic_dir, tmp_path):
    ds = load_dataset(synthetic_dir)
    path = tmp_path / "cache" / "e.jsonl"
    assert isinstance(load_or_build_eval_set(ds, "test", 0, None), EvalSet)
    assert not path.exists()
    built = load_or_build_eval_set(ds, "test", 0, path)
    data = path.read_bytes()
    assert load_or_build_eval_set(ds, "test", 0, path) == built
    assert path.read_bytes() == data
    with pytest.raises(DataError, match="built with seed 0, not 1") as err:
        load_or_build_eval_set(ds, "test", 1, path)
    assert "Delete the file" in err.value.hint
    with pytest.raises(DataError, match="built with split 'test', not 'valid'"):
        load_or_build_eval_set(ds, "valid", 0, path)


def test_load_or_build_detects_changed_split(tmp_path):
    ds = load_dataset(write_synthetic_dataset(tmp_path / "toy"))
    path = tmp_path / "e.jsonl"
    load_or_build_eval_set(ds, "test", 0, path)
    write_synthetic_dataset(tmp_path / "toy", seed=5)
    with pytest.raises(DataError, match="built from another version of .*Test_data.df"):
        load_or_build_eval_set(load_dataset(tmp_path / "toy"), "test", 0, path)


def test_lastfm_eval_set(lastfm_dir, tmp_path):
    ds = load_dataset(lastfm_dir)
    evalset = build_eval_set(ds, "test", seed=0)
    assert len(evalset.rows) == 122 and evalset.dataset == "lastfm" and evalset.num_items == 4606
    for row in evalset.rows:
        assert len(set(row.candidates)) == 20 and row.target in row.candidates
        assert not set(row.history) & set(row.candidates)
    path = write_eval_set(evalset, tmp_path / "lastfm-test.jsonl")
    assert read_eval_set(path, ds.catalogue) == evalset
    again = write_eval_set(build_eval_set(load_dataset(lastfm_dir), "test", seed=0), tmp_path / "again.jsonl")
    assert again.read_bytes() == path.read_bytes()
