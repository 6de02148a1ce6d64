"""A dataset must be the model's before any evaluation work: same catalogue (ids and titles), same
history length. Checked on every path of ``run_eval`` (in memory, sharded, Ray) and in ``verify``."""

import json
import shutil

import pytest

from ilora_export.data.llara import ID2NAME_FILE, load_catalogue
from ilora_export.data.synthetic import write_synthetic_dataset
from ilora_export.errors import DataError
from ilora_export.eval.request import EvalRequest
from ilora_export.eval.run import run_eval
from tests.factories import cli_exit_code

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


def _renamed_copy(data_dir, out, rename=lambda i, title: f"{title} (remix)"):
    """A copy of ``data_dir`` whose id2name.txt gives every item another title."""
    copy = shutil.copytree(data_dir, out)
    titles = load_catalogue(data_dir).titles
    (copy / ID2NAME_FILE).write_text("".join(f"{i}::{rename(i, t)}\n" for i, t in titles.items()), encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def renamed(toy_data_dir, tmp_path_factory):
    return _renamed_copy(toy_data_dir, tmp_path_factory.mktemp("renamed") / "toy")


@pytest.mark.parametrize("path", ["plain-torch", "plain-ort", "sharded-torch", "sharded-ort", "ray"])
def test_renamed_catalogue_is_refused_on_every_path(tiny_export, renamed, tmp_path, path):
    ckpt, export = tiny_export
    backend = "torch" if path.endswith("torch") else "ort"
    output = tmp_path / "out" if path != "plain-torch" and path != "plain-ort" else None
    with pytest.raises(
        DataError,
        match=r"catalogue differs from the model's .* first at item id 0: "
        r"'Item Alpha 00 \(remix\)' here, 'Item Alpha 00' in the model",
    ) as err:
        run_eval(
            EvalRequest(
                ckpt if backend == "torch" else export,
                renamed,
                "test",
                backend=backend,
                limit=2,
                output=output,
                ray=path == "ray",
                threads=1,
            ),
            progress=False,
        )
    assert "50 of 50 items" in err.value.message and "--allow-catalogue-mismatch" in err.value.hint
    assert output is None or not (output / "shards").exists()  # refused before any work


def test_one_renamed_title_is_named(tiny_export, toy_data_dir, tmp_path):
    one = _renamed_copy(toy_data_dir, tmp_path / "one", lambda i, t: "Another Song" if i == 17 else t)
    with pytest.raises(
        DataError,
        match=r"1 of 50 items, first at item id 17: 'Another Song' here, "
        r"'Item Romeo 17' in the model",
    ):
        run_eval(EvalRequest(tiny_export[0], one, "test", limit=1), progress=False)


def test_same_titles_in_the_movielens_layout_are_accepted(tiny_export, tmp_path):
    # u.item holds "Item Alpha 00 (1995)" with ids from 1: the same catalogue once parsed
    data = write_synthetic_dataset(tmp_path / "ml", layout="movielens")
    summary = run_eval(EvalRequest(tiny_export[0], data, "test", limit=1), progress=False)
    assert summary["rows"] == 1 and "catalogue_mismatch" not in summary
    assert summary["catalogue_sha256"] == load_catalogue(data).fingerprint()


def test_mismatch_can_be_allowed_and_is_recorded(tiny_export, renamed, tmp_path):
    out = tmp_path / "out"
    summary = run_eval(
        EvalRequest(
            tiny_export[1],
            renamed,
            "test",
            backend="ort",
            limit=2,
            output=out,
            threads=1,
            allow_catalogue_mismatch=True,
        ),
        progress=False,
    )
    saved = json.loads((out / "summary.json").read_text())
    assert (
        saved["catalogue_mismatch"]
        == summary["catalogue_mismatch"]
        == {
            "allowed": True,
            "items_differing": 50,
            "first_item_id": 0,
            "dataset_title": "Item Alpha 00 (remix)",
            "model_title": "Item Alpha 00",
            "dataset_sha256": load_catalogue(renamed).fingerprint(),
        }
    )
    assert saved["rows"] == 2
    # judged against the model's titles, as the prompts show them
    assert "(remix)" not in (out / "predictions.csv").read_text(encoding="utf-8")


def test_cli_names_the_mismatch_and_the_override(tiny_export, renamed, tmp_path, capsys):
    args = ["eval", str(tiny_export[1]), "--backend", "ort", "--data", str(renamed), "--limit", "1", "--threads", "1"]
    assert cli_exit_code(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.startswith("Error: ") and "\nHint: " in err and "Traceback" not in err
    assert "'Item Alpha 00 (remix)' here, 'Item Alpha 00' in the model" in err
    assert cli_exit_code([*args, "--allow-catalogue-mismatch"]) == 0
    assert "dataset titles differ from the model's in 50 items" in capsys.readouterr().out


def test_count_mismatch_cannot_be_allowed(tiny_export, tmp_path):
    data = write_synthetic_dataset(tmp_path / "big", num_items=60)
    with pytest.raises(DataError, match=r"catalogue has 60 items, the model's .* has 50"):
        run_eval(EvalRequest(tiny_export[0], data, "test", limit=1, allow_catalogue_mismatch=True), progress=False)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_longer_histories_than_the_model_takes_are_refused(tiny_export, tmp_path, backend):
    data = write_synthetic_dataset(tmp_path / "long", seq_len=12)  # same catalogue, 12 history slots
    target = tiny_export[0] if backend == "torch" else tiny_export[1]
    with pytest.raises(DataError, match=r"Test_data.df: histories hold 12 items .*the model takes 10"):
        run_eval(
            EvalRequest(target, data, "test", backend=backend, limit=2, threads=1, output=tmp_path / "out"),
            progress=False,
        )
    assert not (tmp_path / "out" / "shards").exists()


def test_eval_set_file_with_other_history_length_is_refused(tiny_export, tmp_path):
    from ilora_export.data.evalset import export_eval_set

    data = write_synthetic_dataset(tmp_path / "short", seq_len=8)
    _, file = export_eval_set(data, "test", 0, tmp_path / "set.jsonl")
    with pytest.raises(DataError, match=r"set.jsonl: histories hold 8 items .*the model takes 10"):
        run_eval(EvalRequest(tiny_export[0], data, "test", eval_set=file, limit=1), progress=False)


def test_verify_refuses_another_catalogue_before_comparing(tiny_export, renamed):
    from ilora_export.eval.verify import verify_export

    with pytest.raises(DataError, match=r"catalogue differs from the model's .* item id 0"):
        verify_export(*tiny_export, data_dir=renamed, limit=1, threads=1, progress=False)
