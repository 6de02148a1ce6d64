from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from ilora_export.data.llara import (
    SPLIT_FILES,
    load_catalogue,
    load_dataset,
    parse_movielens_title,
)
from ilora_export.data.synthetic import synthetic_titles, write_synthetic_dataset
from ilora_export.errors import DataError


def _write_split(root, name, seqs, lens, nexts, **extra):
    frame = pd.DataFrame({"seq": seqs, "len_seq": lens, "next": nexts, **extra})
    frame.to_pickle(root / SPLIT_FILES[name])


# ---------------------------------------------------------------- synthetic data


def test_synthetic_catalogue(synthetic_dir):
    ds = load_dataset(synthetic_dir)
    cat = ds.catalogue
    assert cat.num_items == cat.pad_id == 50
    assert sorted(cat.titles) == list(range(50))
    assert cat.title(3) == "Item Delta 03"
    assert cat.source == synthetic_dir / "id2name.txt"
    assert ds.name == "toy"


def test_synthetic_titles_never_contain_each_other():
    for n in (50, 300):
        titles = [t.lower() for t in synthetic_titles(n)]
        assert len(set(titles)) == n
        for i, a in enumerate(titles):
            assert not any(a in b for j, b in enumerate(titles) if j != i), a


def test_split_normalized_and_filtered(synthetic_dir):
    ds = load_dataset(synthetic_dir)
    train = ds.split("train")
    assert list(train.columns) == ["seq", "len_seq", "next", "row_id"]
    # one train row in ten is too short and dropped; row_id keeps the file position
    assert len(train) == 180
    assert 9 not in set(train["row_id"]) and 10 in set(train["row_id"])
    raw = pd.read_pickle(synthetic_dir / "train_data.df")
    for seq, n, nxt, row_id in zip(train["seq"], train["len_seq"], train["next"], train["row_id"]):
        assert n >= 3
        assert len(seq) == 10 and all(type(x) is int for x in seq)
        assert seq[n:] == [50] * (10 - n)
        assert seq[:n] == list(raw["seq"][row_id][:n])
        assert nxt == raw["next"][row_id] and nxt not in seq[:n]
    assert len(ds.split("valid")) == 12 and len(ds.split("test")) == 12
    assert ds.seq_len() == 10


def test_movielens_layout_loads_like_id2name(synthetic_dir, synthetic_ml_dir):
    plain, ml = load_dataset(synthetic_dir), load_dataset(synthetic_ml_dir)
    assert ml.catalogue.source.name == "u.item"
    assert ml.catalogue.titles == plain.catalogue.titles
    raw = pd.read_pickle(synthetic_ml_dir / "Test_data.df")
    assert isinstance(raw["next"][0], tuple) and isinstance(raw["seq"][0][0], tuple)
    for name in SPLIT_FILES:
        pd.testing.assert_frame_equal(ml.split(name), plain.split(name))


def test_split_is_cached(synthetic_dir):
    ds = load_dataset(synthetic_dir)
    assert ds.split("test") is ds.split("test")


def test_seq_len_other_state_size(tmp_path):
    ds = load_dataset(write_synthetic_dataset(tmp_path / "short", seq_len=5, num_rows=(20, 4, 4)))
    assert ds.seq_len() == 5
    assert all(len(s) == 5 for s in ds.split("train")["seq"])


def test_row_id_is_file_position_not_index_label(toy_copy):
    _write_split(toy_copy, "test", [[1, 2, 3, 50], [4, 50, 50, 50], [5, 6, 7, 8]], [3, 1, 4], [9, 10, 11])
    frame = pd.read_pickle(toy_copy / "Test_data.df")
    frame.index = [100, 7, 3]
    frame.to_pickle(toy_copy / "Test_data.df")
    test = load_dataset(toy_copy).split("test")
    assert test["row_id"].tolist() == [0, 2]
    assert test["next"].tolist() == [9, 11]


def test_pad_values_after_len_seq_are_normalized(toy_copy):
    _write_split(toy_copy, "test", [[1, 2, 3, 0, 0]], [3], [9])
    assert load_dataset(toy_copy).split("test")["seq"][0] == [1, 2, 3, 50, 50]


# ---------------------------------------------------------------- catalogue files


def test_uitem_titles(tmp_path):
    lines = [
        "1|Toy Story (1995)|01-Jan-1995||http://x|0",
        "2|Usual Suspects, The (1995)|01-Jan-1995||http://x|0",
        "3|Big Blue, The (Grand bleu, Le) (1988)|01-Jan-1988||http://x|0",
        "4|Nénette et Boni (1996)|01-Jan-1996||http://x|0",
        "5|unknown||||0",
        "6|Anna (1996)|01-Jan-1996||http://x|0",
        "7|Man from Down Under, A (1943)|01-Jan-1943||http://x|0",
    ]
    (tmp_path / "u.item").write_bytes(("\n".join(lines) + "\n").encode("iso-8859-1"))
    cat = load_catalogue(tmp_path)
    assert cat.titles == {
        0: "Toy Story",
        1: "The Usual Suspects",
        2: "The Big Blue (Grand bleu, Le)",
        3: "Nénette et Boni",
        4: "unknown",
        5: "Anna",
        6: "A Man from Down Under",
    }
    assert cat.pad_id == 7


def test_article_move_only_for_uitem(tmp_path):
    (tmp_path / "id2name.txt").write_text("0::Beatles, The\n1:: Padded Name  \n", encoding="utf-8")
    assert load_catalogue(tmp_path).titles == {0: "Beatles, The", 1: "Padded Name"}


@pytest.mark.parametrize(
    "raw, title",
    [
        ("Shawshank Redemption, The (1994)", "The Shawshank Redemption"),
        ("American President, An (1995)", "An American President"),
        ("Stand by Me (1986)", "Stand by Me"),
        ("Seven (Se7en) (1995)", "Seven (Se7en)"),
        ("Bewegte Mann, Der (1994)", "Bewegte Mann, Der"),
    ],
)
def test_parse_movielens_title(raw, title):
    assert parse_movielens_title(raw) == title


def test_id2name_preferred_over_uitem(synthetic_dir, tmp_path):
    (tmp_path / "id2name.txt").write_text("0::Zero\n1::One\n", encoding="utf-8")
    (tmp_path / "u.item").write_text("1|Other (1995)|\n", encoding="iso-8859-1")
    assert load_catalogue(tmp_path).titles == {0: "Zero", 1: "One"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("0::A\n1::B\n3::D\n", r"not contiguous \(id 2 is missing"),
        ("1::A\n2::B\n", r"not contiguous \(id 0 is missing"),
        ("0::A\nB without id\n", "line 2 is not 'ID::Name'"),
        ("0::A\nx::B\n", "line 2 has a non-integer item id 'x'"),
        ("0::A\n0::B\n", "line 2 repeats item id 0"),
        ("0::A\n1::  \n", "line 2 has an empty title"),
        ("\n\n", "the catalogue is empty"),
    ],
)
def test_bad_id2name(tmp_path, text, message):
    (tmp_path / "id2name.txt").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        load_catalogue(tmp_path)
    assert "id2name.txt" in str(err.value) and err.value.hint


def test_uitem_gap_reported_in_file_ids(tmp_path):
    (tmp_path / "u.item").write_text("1|A (1995)|\n3|C (1995)|\n", encoding="iso-8859-1")
    with pytest.raises(DataError, match=r"u.item: item ids are not contiguous \(id 2 is missing"):
        load_catalogue(tmp_path)


def test_missing_catalogue_and_folder(tmp_path):
    with pytest.raises(DataError, match="no id2name.txt or u.item"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="dataset folder not found") as err:
        load_dataset(tmp_path / "nope")
    assert err.value.hint


def test_catalogue_title_and_check_ids(synthetic_dir):
    cat = load_dataset(synthetic_dir).catalogue
    with pytest.raises(DataError, match=r"item id 50 is not in the catalogue \(50 items\)"):
        cat.title(50)
    cat.check_ids([0, 49], "history")
    cat.check_ids(np.array([3, 4]), "history")
    cat.check_ids([], "history")
    with pytest.raises(DataError, match=r"^row 7: item id 5000 outside the catalogue \(50 items\)$"):
        cat.check_ids([1, 5000], "row 7")
    with pytest.raises(DataError, match="row 7: item id -1 outside"):
        cat.check_ids([-1], "row 7")
    with pytest.raises(DataError, match="item id 50 is the padding id"):
        cat.check_ids([50], "row 7")


# ---------------------------------------------------------------- split validation


def test_missing_split_file(toy_copy):
    (toy_copy / "Test_data.df").unlink()
    ds = load_dataset(toy_copy)
    assert len(ds.split("train")) == 180
    with pytest.raises(DataError, match="Test_data.df: split file not found"):
        ds.split("test")


def test_unknown_split(synthetic_dir):
    with pytest.raises(DataError, match="unknown split 'dev'") as err:
        load_dataset(synthetic_dir).split("dev")
    assert "train, valid, test" in err.value.hint


def test_not_a_pickle(toy_copy):
    (toy_copy / "Val_data.df").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="Val_data.df: cannot be read as a pandas pickle"):
        load_dataset(toy_copy).split("valid")


@pytest.mark.parametrize("value, kind", [({"seq": [1, 2, 3]}, "dict"), (7, "int"), ([1], "list")])
def test_pickle_of_something_else(toy_copy, value, kind):
    (toy_copy / "Val_data.df").write_bytes(pickle.dumps(value))
    with pytest.raises(DataError, match=f"Val_data.df: holds a value of type {kind}, not a pandas DataFrame$"):
        load_dataset(toy_copy).split("valid")


def test_seq_of_plain_ids(toy_copy):
    _write_split(toy_copy, "test", [7, 8], [3, 3], [1, 2])
    with pytest.raises(DataError, match="row 0: 'seq' holds a value of type int, not a list of items$"):
        load_dataset(toy_copy).split("test")


def test_missing_columns(toy_copy):
    pd.DataFrame({"seq": [[1, 2, 3]], "length": [3]}).to_pickle(toy_copy / "Test_data.df")
    with pytest.raises(DataError, match=r"Test_data.df: missing column\(s\) 'len_seq', 'next'"):
        load_dataset(toy_copy).split("test")


def test_id_outside_catalogue_names_file_and_row(toy_copy):
    _write_split(toy_copy, "test", [[1, 2, 3, 50], [4, 5, 6, 50]], [3, 3], [7, 5000])
    with pytest.raises(DataError, match=r"Test_data.df: row 1: item id 5000 outside the catalogue \(50 items\)"):
        load_dataset(toy_copy).split("test")


def test_padding_inside_history(toy_copy):
    _write_split(toy_copy, "test", [[1, 50, 3, 50]], [3], [7])
    with pytest.raises(DataError, match="row 0: item id 50 is the padding id"):
        load_dataset(toy_copy).split("test")


def test_short_rows_are_not_validated(toy_copy):
    # the real LastFM train file starts with an all-padding row of len_seq 1: it is dropped, not an error
    _write_split(toy_copy, "test", [[50, 50, 50, 50], [1, 2, 3, 50]], [1, 3], [0, 4])
    assert load_dataset(toy_copy).split("test")["row_id"].tolist() == [1]


def test_empty_after_filter(toy_copy):
    _write_split(toy_copy, "test", [[1, 2, 50, 50]], [2], [7])
    with pytest.raises(DataError, match="Test_data.df: no row has len_seq >= 3"):
        load_dataset(toy_copy).split("test")


def test_empty_file(toy_copy):
    pd.DataFrame({"seq": [], "len_seq": [], "next": []}).to_pickle(toy_copy / "Test_data.df")
    with pytest.raises(DataError, match="Test_data.df: the split is empty"):
        load_dataset(toy_copy).split("test")


def test_len_seq_longer_than_seq(toy_copy):
    _write_split(toy_copy, "test", [[1, 2, 3]], [5], [7])
    with pytest.raises(DataError, match="row 0: len_seq 5 is longer than 'seq' \\(3 items\\)"):
        load_dataset(toy_copy).split("test")


def test_ragged_seq(toy_copy):
    _write_split(toy_copy, "test", [[1, 2, 3], [1, 2, 3, 4]], [3, 3], [7, 8])
    with pytest.raises(DataError, match="'seq' lists have different lengths \\(3, 4\\)"):
        load_dataset(toy_copy).split("test")


def test_state_size_must_agree_across_splits(toy_copy):
    _write_split(toy_copy, "test", [[1, 2, 3, 50]], [3], [7])
    ds = load_dataset(toy_copy)
    ds.split("train")
    with pytest.raises(DataError, match="Test_data.df: 'seq' holds 4 items, other splits hold 10"):
        ds.split("test")


def test_non_id_values(toy_copy):
    _write_split(toy_copy, "test", [[1, 2, "x", 50]], [3], [7])
    with pytest.raises(DataError, match="row 0: column 'seq' holds 'x', not an item id"):
        load_dataset(toy_copy).split("test")


# ---------------------------------------------------------------- the real LastFM files


def test_lastfm(lastfm_dir):
    ds = load_dataset(lastfm_dir)
    cat = ds.catalogue
    assert cat.num_items == cat.pad_id == 4606
    assert cat.title(0) == "Morcheeba" and cat.title(4605) == "Abney Park"
    assert ds.seq_len() == 10

    raw_train = pd.read_pickle(lastfm_dir / "train_data.df")
    assert len(raw_train) == 50_800
    train = ds.split("train")
    assert len(train) == int((raw_train["len_seq"] >= 3).sum()) == 47_872

    test = ds.split("test")
    assert len(test) == 122 and test["row_id"].tolist() == list(range(122))
    assert (test["len_seq"] >= 3).all()
    first = test.iloc[0]
    assert first["seq"] == [392, 225, 234, 576, 577, 272, 4606, 4606, 4606, 4606]
    assert first["len_seq"] == 6 and first["next"] == 578
    assert len(ds.split("valid")) == 122
