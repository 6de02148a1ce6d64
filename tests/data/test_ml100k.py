from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ilora_export.cache import fetch_wheel
from ilora_export.cli import cli
from ilora_export.data import ml100k
from ilora_export.data.ml100k import build_ml100k_demo, split_counts
from ilora_export.errors import DataError, IloraError, UnsafePickleError

FILES = ("train_data.df", "Val_data.df", "Test_data.df", "u.item")
PAD = 1682


@pytest.fixture(scope="module")
def recbole_wheel() -> Path:
    return fetch_wheel(ml100k.RECBOLE_NAME, ml100k.RECBOLE_VERSION, ml100k.RECBOLE_SHA256, progress=False)


@pytest.fixture(scope="module")
def raw(recbole_wheel):
    """The wheel's interactions and items, read independently of the builder."""
    with zipfile.ZipFile(recbole_wheel) as zf:
        inter = pd.read_csv(zf.open(ml100k.INTER_MEMBER), sep="\t")
        item = pd.read_csv(zf.open(ml100k.ITEM_MEMBER), sep="\t", dtype=str, keep_default_na=False)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    item.columns = [c.split(":")[0] for c in item.columns]
    return inter, item


@pytest.fixture(scope="module")
def ml(tmp_path_factory) -> Path:
    return build_ml100k_demo(tmp_path_factory.mktemp("ml") / "ml100k", progress=False)


@pytest.fixture(scope="module")
def splits(ml):
    return {name: pd.read_pickle(ml / name) for name in FILES[:3]}


def test_row_counts(ml, raw):
    inter, _ = raw
    users = inter["user_id"].nunique()
    assert users == 943 and len(inter) == 100_000
    counts = split_counts(ml)
    assert counts == {"train": 97_171, "valid": 943, "test": 943}
    # every interaction but each user's first (which has no history) is a target exactly once
    assert sum(counts.values()) == len(inter) - users


def test_row_layout(splits):
    for frame in splits.values():
        assert list(frame.columns) == ["seq", "len_seq", "next"]
        for seq, n, nxt in frame.itertuples(index=False):
            assert len(seq) == 10 and 1 <= n <= 10
            assert all(0 <= i < PAD and 1 <= r <= 5 for i, r in seq[:n])
            assert seq[n:] == [(PAD, 0)] * (10 - n)
            assert isinstance(nxt, tuple) and 0 <= nxt[0] < PAD and 1 <= nxt[1] <= 5
    assert (splits["Val_data.df"].len_seq == 10).all() and (splits["Test_data.df"].len_seq == 10).all()


def test_leave_one_out_matches_raw_chronology(splits, raw):
    inter, _ = raw
    val, test = splits["Val_data.df"], splits["Test_data.df"]
    for k, user in enumerate(sorted(inter["user_id"].unique())[:25]):
        events = inter[inter.user_id == user].sort_values(["timestamp", "item_id"], kind="stable")
        seq = [(int(i) - 1, int(r)) for i, r in zip(events.item_id, events.rating)]
        assert test.next[k] == seq[-1] and test.seq[k] == seq[-11:-1]
        assert val.next[k] == seq[-2] and val.seq[k] == seq[-12:-2]
    first = inter[inter.user_id == inter.user_id.min()].sort_values(["timestamp", "item_id"], kind="stable")
    train = splits["train_data.df"]
    assert train.next[0] == (int(first.item_id.iloc[1]) - 1, int(first.rating.iloc[1]))
    assert train.seq[0][:1] == [(int(first.item_id.iloc[0]) - 1, int(first.rating.iloc[0]))]


def test_u_item_titles_round_trip(ml, raw):
    _, item = raw
    lines = (ml / "u.item").read_bytes().decode("iso-8859-1").splitlines()
    assert len(lines) == PAD
    assert lines[0] == "1|Toy Story (1995)||||0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"
    year = re.compile(r" \(\d{4}\)$")
    titles = {int(parts[0]): year.sub("", parts[1]) for parts in (line.split("|") for line in lines)}
    assert sorted(titles) == list(range(1, PAD + 1)) and all(len(line.split("|")) == 24 for line in lines)
    expected = dict(zip(item.item_id.astype(int), item.movie_title))
    expected[267] = "unknown"  # RecBole's copy misspells it "unkonwn"
    expected[1412] = "Land Before Time III: The Time of the Great Giving"  # year inside RecBole's title
    assert titles == expected
    assert titles[1633] == "Á köldum klaka (Cold Fever)"


def test_project_loader_reads_it(ml):
    from ilora_export.data.llara import load_catalogue

    catalogue = load_catalogue(ml)
    assert catalogue.pad_id == PAD and catalogue.title(0) == "Toy Story"


def test_deterministic(ml, tmp_path):
    again = build_ml100k_demo(tmp_path / "again", progress=False, max_seq_len=10)
    for name in FILES:
        assert (again / name).read_bytes() == (ml / name).read_bytes(), name


def test_shorter_windows(tmp_path):
    out = build_ml100k_demo(tmp_path / "w3", max_seq_len=3, progress=False)
    test = pd.read_pickle(out / "Test_data.df")
    assert split_counts(out) == {"train": 97_171, "valid": 943, "test": 943}
    assert all(len(s) == 3 for s in test.seq) and (test.len_seq == 3).all()
    with pytest.raises(DataError, match="max_seq_len must be at least 1"):
        build_ml100k_demo(tmp_path / "w0", max_seq_len=0, progress=False)


def test_interrupted_build_leaves_old_files_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "ml"
    out.mkdir()
    for name in FILES:  # a previous output
        (out / name).write_bytes(b"previous")
    real = pd.DataFrame.to_pickle
    calls = []

    def crash_on_third(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_pickle", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_ml100k_demo(out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert all((out / name).read_bytes() == b"previous" for name in FILES)


def test_interrupted_build_leaves_no_new_folder(tmp_path, monkeypatch):
    def crash(self, path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_pickle", crash)
    with pytest.raises(KeyboardInterrupt):
        build_ml100k_demo(tmp_path / "new" / "ml", progress=False)
    assert list(tmp_path.iterdir()) == []


def _no_download(*args, **kwargs):
    raise AssertionError("the recbole wheel was fetched")


@pytest.mark.parametrize("other", ["id2name.txt", "notes.md", ".hidden"])
def test_refuses_a_folder_of_other_files(tmp_path, monkeypatch, other):
    out = tmp_path / "lastfm"
    out.mkdir()
    (out / other).write_text("0::Morcheeba\n")
    (out / "Test_data.df").write_bytes(b"theirs")
    monkeypatch.setattr(ml100k, "fetch_wheel", _no_download)
    with pytest.raises(IloraError, match=f"{out} is not .*demo dataset.*{other}") as err:
        build_ml100k_demo(out, progress=False)
    assert "\n" not in str(err.value) and "empty" in err.value.hint
    assert sorted(p.name for p in out.iterdir()) == sorted([other, "Test_data.df"])
    assert (out / "Test_data.df").read_bytes() == b"theirs"


def test_refuses_part_of_a_dataset(tmp_path, monkeypatch):
    out = tmp_path / "ml"
    out.mkdir()
    (out / "u.item").write_text("1|Mine (1995)|\n", encoding="iso-8859-1")
    monkeypatch.setattr(ml100k, "fetch_wheel", _no_download)
    with pytest.raises(IloraError, match="is not a .*demo dataset"):
        build_ml100k_demo(out, progress=False)
    assert (out / "u.item").read_text(encoding="iso-8859-1") == "1|Mine (1995)|\n"


def test_failed_build_leaves_no_new_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise DataError("no network", hint="retry")

    monkeypatch.setattr(ml100k, "fetch_wheel", offline)
    with pytest.raises(DataError, match="no network"):
        build_ml100k_demo(tmp_path / "new" / "ml", progress=False)
    with pytest.raises(DataError, match="max_seq_len"):
        build_ml100k_demo(tmp_path / "new" / "ml", progress=False, max_seq_len=0)
    assert list(tmp_path.iterdir()) == []


def test_split_counts_refuses_planted_files(tmp_path):
    import os
    import shlex

    class RunsCommand:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(tmp_path / 'pwned'))}",)

    for name in FILES[:3]:
        frame = pd.DataFrame({"seq": [[(1, 5)]], "len_seq": [1], "next": [(2, 4)]})
        frame.attrs = {"note": RunsCommand()}
        frame.to_pickle(tmp_path / name)
    with pytest.raises(UnsafePickleError, match="train_data.df: refusing to load global"):
        split_counts(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_output_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="exists and is not a folder"):
        build_ml100k_demo(tmp_path / "f", progress=False)


def test_demo_data_command(tmp_path, ml):
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["demo-data", "ml100k", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{out}: train 97171 rows, valid 943 rows, test 943 rows"
    assert (out / "Test_data.df").read_bytes() == (ml / "Test_data.df").read_bytes()
    again = CliRunner().invoke(cli, ["demo-data", "ml100k", "-o", str(out)])  # into its own previous output
    assert again.exit_code == 0 and again.output == result.output
    missing = CliRunner().invoke(cli, ["demo-data", "ml100k"])
    assert missing.exit_code == 2 and "Missing option '-o'" in missing.output


# --------------------------------------------------------------------------------------------------
# Title styles: the project's parsing of u.item titles and the official loaders' rule

#: u.item title field -> (project title, official title), for the kinds of field the two rules treat
#: differently and for ones both treat alike.
TITLE_CASES = {
    "Toy Story (1995)": ("Toy Story", "Toy Story"),
    "Usual Suspects, The (1995)": ("The Usual Suspects", "The Usual Suspects"),
    "Time to Kill, A (1996)": ("A Time to Kill", "A Time to Kill"),
    "Á köldum klaka (Cold Fever) (1994)": ("Á köldum klaka (Cold Fever)", "Á köldum klaka (Cold Fever)"),
    "unknown": ("unknown", ""),
    "American in Paris, An (1951)": ("An American in Paris", "A American in Parisn"),
    "Good, The Bad and The Ugly, The (1966)": ("The Good, The Bad and The Ugly", "The Good Bad and The Ugly"),
    "Die xue shuang xiong (Killer, The) (1989)": (
        "Die xue shuang xiong (Killer, The)",
        "The Die xue shuang xiong (Killer)",
    ),
    "Two Friends (1986) ": ("Two Friends", "Two Friends "),
    "Land Before Time III: The Time of the Great Giving (1995) (V)": (
        "Land Before Time III: The Time of the Great Giving (1995) (V)",
        "Land Before Time III: The Time of the Great Giving (19",
    ),
}

#: The items (u.item ids) whose titles differ between the styles in the u.item built from the wheel.
DEMO_DIFFERENCES = {
    177: ("The Good, The Bad and The Ugly", "The Good Bad and The Ugly"),
    267: ("unknown", ""),
    436: ("An American Werewolf in London", "A American Werewolf in Londonn"),
    602: ("An American in Paris", "A American in Parisn"),
    966: ("An Affair to Remember", "A Affair to Remembern"),
    1005: (
        "Double vie de Véronique, La (Double Life of Veronique, The)",
        "The Double vie de Véronique, La (Double Life of Veronique)",
    ),
    1019: ("Die xue shuang xiong (Killer, The)", "The Die xue shuang xiong (Killer)"),
    1227: ("An Awfully Big Adventure", "A Awfully Big Adventuren"),
}

#: Title fields of the MovieLens-100K original u.item (as published with the official code) that
#: RecBole's copy, and so the u.item built here, writes otherwise.
ORIGINAL_FIELDS = {
    1128: "Heidi Fleiss: Hollywood Madam (1995) ",
    1201: "Marlene Dietrich: Shadow and Light (1996) ",
    1412: "Land Before Time III: The Time of the Great Giving (1995) (V)",
    1635: "Two Friends (1986) ",
}


@pytest.mark.parametrize("field", sorted(TITLE_CASES))
def test_title_styles(field):
    project, official = TITLE_CASES[field]
    assert ml100k.movielens_title(field) == project  # the default
    assert ml100k.movielens_title(field, "project") == project
    assert ml100k.movielens_title(field, "official") == ml100k.official_movielens_title(field) == official


def test_unknown_title_style_is_refused(tmp_path):
    with pytest.raises(DataError, match="unknown title style 'llara'") as err:
        ml100k.read_u_item_titles(tmp_path / "missing", "llara")  # refused before the file is read
    assert "'project', 'official'" in err.value.hint


def test_read_u_item_titles_refuses_broken_files(tmp_path):
    with pytest.raises(DataError, match="cannot be read"):
        ml100k.read_u_item_titles(tmp_path / "u.item")
    bad = tmp_path / "bad.item"
    for text, message in [
        ("1|Toy Story (1995)|\nTwo|Jumanji (1995)|\n", "line 2 is not 'id|title"),
        ("0|Toy Story (1995)|\n", "line 1 is not 'id|title.*id from 1"),
        ("1\n", "line 1 is not"),
        ("1|Toy Story (1995)|\n1|Toy Story (1995)|\n", "line 2 repeats item id 1"),
    ]:
        bad.write_text(text, encoding="iso-8859-1")
        with pytest.raises(DataError, match=message):
            ml100k.read_u_item_titles(bad, "official")


def test_title_styles_on_the_built_u_item(ml):
    from ilora_export.data.llara import load_catalogue

    project = ml100k.read_u_item_titles(ml / "u.item")
    official = ml100k.read_u_item_titles(ml / "u.item", title_style="official")
    assert project == load_catalogue(ml).titles  # the default is what the project's loader reads
    assert sorted(official) == list(range(PAD))
    differences = ml100k.title_style_differences(ml / "u.item")
    assert {i + 1: pair for i, pair in differences.items()} == DEMO_DIFFERENCES
    assert all(official[i] == project[i] for i in range(PAD) if i not in differences)
    assert sum(official[i] == "" for i in range(PAD)) == 1  # item 267, "unknown"


def test_title_styles_on_the_original_title_fields(ml, tmp_path):
    """With the four title fields the original u.item writes otherwise, 12 of the 1,682 titles differ."""
    lines = (ml / "u.item").read_bytes().decode("iso-8859-1").split("\n")
    for item, field in ORIGINAL_FIELDS.items():
        fields = lines[item - 1].split("|")
        assert int(fields[0]) == item and fields[1] == field.rstrip().removesuffix(" (V)")
        lines[item - 1] = "|".join([fields[0], field, *fields[2:]])
    original = tmp_path / "u.item"
    original.write_bytes("\r\n".join(lines).encode("iso-8859-1"))  # any line end reads the same
    differences = {i + 1: pair for i, pair in ml100k.title_style_differences(original).items()}
    assert len(differences) == 12
    assert sorted(differences) == sorted([*DEMO_DIFFERENCES, *ORIGINAL_FIELDS])
    assert differences[1128] == ("Heidi Fleiss: Hollywood Madam", "Heidi Fleiss: Hollywood Madam ")
    assert differences[1412] == (
        TITLE_CASES[ORIGINAL_FIELDS[1412]][0],
        "Land Before Time III: The Time of the Great Giving (19",
    )
