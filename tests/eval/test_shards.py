"""Sharded, resumable evaluation output (single process), on the tiny export."""

import csv
import json
from dataclasses import replace

import pytest

from ilora_export.errors import IloraError
from ilora_export.eval.request import EvalRequest
from ilora_export.eval.run import run_eval
from ilora_export.eval.shards import SHARDS, ShardStore, plan_shards
from tests.factories import kill_eval_at_first_shard

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")
pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install -e .[test])")

ROWS, SHARD_ROWS = 60, 4  # 15 shards of the toy train split


def _eval(export, data, out, **kw):
    return run_eval(
        EvalRequest(
            export,
            data,
            "train",
            backend="ort",
            limit=ROWS,
            output=out,
            shard_rows=SHARD_ROWS,
            threads=1,
            batch_size=2,
            **kw,
        ),
        progress=False,
    )


def _predictions(out):
    return list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))


@pytest.fixture(scope="module")
def whole(tiny_export, toy_data_dir, tmp_path_factory):
    """An uninterrupted sharded run, and the same evaluation without -o (in memory)."""
    _, export = tiny_export
    out = tmp_path_factory.mktemp("whole") / "eval"
    summary = _eval(export, toy_data_dir, out)
    in_memory = run_eval(
        EvalRequest(export, toy_data_dir, "train", backend="ort", limit=ROWS, threads=1, batch_size=2), progress=False
    )
    return out, summary, in_memory


def test_shards_cover_every_row_once_and_match_the_in_memory_eval(whole):
    out, summary, in_memory = whole
    files = sorted((out / SHARDS).glob("shard-*.parquet"))
    assert len(files) == summary["shards"] == ROWS // SHARD_ROWS and summary["shards_resumed"] == 0
    rows = _predictions(out)
    assert len(rows) == len({r["row_id"] for r in rows}) == ROWS
    for key in ("valid", "correct", "valid_ratio", "hit_ratio@1_of_total", "sasrec_hit_ratio@1"):
        assert summary[key] == in_memory[key]
    assert len({r["answer"] for r in rows}) > 1  # real, varied answers


def test_rerun_resumes_everything_and_rewrites_the_same_result(whole, tiny_export, toy_data_dir):
    out, summary, _ = whole
    before = (out / "predictions.csv").read_bytes()
    again = _eval(tiny_export[1], toy_data_dir, out)
    assert again["shards_resumed"] == again["shards"] and (out / "predictions.csv").read_bytes() == before


def test_killed_run_resumes_to_the_uninterrupted_result(whole, tiny_export, toy_data_dir, tmp_path):
    out, _, _ = whole
    killed = tmp_path / "killed"
    args = [
        str(tiny_export[1]),
        "--backend",
        "ort",
        "--data",
        str(toy_data_dir),
        "--split",
        "train",
        "--limit",
        str(ROWS),
        "--shard-rows",
        str(SHARD_ROWS),
        "--threads",
        "1",
        "--batch-size",
        "1",
    ]
    finished = kill_eval_at_first_shard(args, killed, timeout=120)
    assert 1 <= finished < ROWS // SHARD_ROWS and not (killed / "predictions.csv").exists()
    resumed = _eval(tiny_export[1], toy_data_dir, killed)
    assert resumed["shards_resumed"] == finished
    assert (killed / "predictions.csv").read_bytes() == (out / "predictions.csv").read_bytes()


def test_another_evaluation_is_not_mixed_into_the_folder(whole, tiny_export, toy_data_dir, tmp_path):
    out, _, _ = whole
    other = tmp_path / "other"
    _eval(tiny_export[1], toy_data_dir, other)
    fewer = EvalRequest(
        tiny_export[1],
        toy_data_dir,
        "train",
        backend="ort",
        limit=ROWS - 1,
        output=other,
        shard_rows=SHARD_ROWS,
        threads=1,
    )
    with pytest.raises(IloraError, match="another evaluation .*evalset_sha256"):
        run_eval(fewer, progress=False)
    summary = run_eval(replace(fewer, restart=True), progress=False)
    assert summary["rows"] == ROWS - 1 and summary["shards_resumed"] == 0
    # a folder the caller owns (quickstart's): another evaluation is replaced, the same one resumed
    replaced = _eval(tiny_export[1], toy_data_dir, other, replace_other=True)
    assert replaced["rows"] == ROWS and replaced["shards_resumed"] == 0
    assert _eval(tiny_export[1], toy_data_dir, other, replace_other=True)["shards_resumed"] == replaced["shards"]


def test_collect_refuses_missing_or_foreign_shards(whole, tmp_path):
    out, _, _ = whole
    import shutil

    copy = shutil.copytree(out, tmp_path / "copy")
    run = json.loads((copy / "run.json").read_text())
    store = ShardStore(
        copy, run["identity"], plan_shards(ROWS, SHARD_ROWS), [int(r["row_id"]) for r in _predictions(copy)]
    )
    assert store.collect()[0][0]["row_id"] == store.row_ids[0]
    (copy / SHARDS / "shard-00003.parquet").unlink()
    with pytest.raises(IloraError, match=r"shards \[3\] missing"):
        store.collect()
    assert store.pending() == [3]
    # a shard file of another run (other fingerprint) does not count as finished
    foreign = ShardStore(copy, run["identity"] | {"shard_rows": 99}, store.plan, store.row_ids)
    assert foreign.pending() == list(range(len(store.plan)))


def _finished_store(root, rows=6, shard_rows=2):
    """A store whose every shard is written (records hold only row ids), run.json included."""
    store = ShardStore(root, {"model": "m", "shard_rows": shard_rows}, plan_shards(rows, shard_rows), list(range(rows)))
    store.open()
    for k, (start, end) in enumerate(store.plan):
        store.write(k, [{"row_id": i, "answer": f"a{i}"} for i in range(start, end)], 0.0)
    return store


@pytest.mark.parametrize("name", ["shard-abc.parquet", "shard-00099.parquet"])
def test_unexpected_shard_files_are_named_with_the_way_out(tmp_path, name):
    store = _finished_store(tmp_path / "out")
    (tmp_path / "out" / SHARDS / name).write_bytes(store.path(0).read_bytes())
    for call in (store.collect, store.open):
        with pytest.raises(IloraError, match=rf"shards: unexpected file {name}, not one of the 3 shards") as err:
            call()
        assert "delete it" in err.value.hint and "--restart" in err.value.hint
        assert "run the same command again" not in err.value.hint
    store.open(restart=True)  # discards every shard file, the stray one too
    assert sorted(p.name for p in (tmp_path / "out" / SHARDS).iterdir()) == []


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"run"', '{"fingerprint": 3, "identity": [1]}', "\xff"])
def test_corrupt_run_json_is_called_corrupt(tmp_path, text):
    store = _finished_store(tmp_path / "out")
    (tmp_path / "out" / "run.json").write_text(text, encoding="latin-1")
    with pytest.raises(IloraError, match=r"run.json: unreadable or corrupt") as err:
        store.open()
    assert "another evaluation" not in err.value.message and "--restart" in err.value.hint
    store.open(replace_other=True)  # a folder the caller owns is evaluated again from scratch
    assert store.pending() == [0, 1, 2]


def test_cli_stray_shard_file_gives_an_error_not_a_traceback(tiny_export, toy_data_dir, tmp_path, capsys):
    from tests.factories import cli_exit_code

    out = tmp_path / "out"
    args = [
        "eval",
        str(tiny_export[1]),
        "--backend",
        "ort",
        "--data",
        str(toy_data_dir),
        "--limit",
        "2",
        "--shard-rows",
        "1",
        "--threads",
        "1",
        "-o",
        str(out),
    ]
    assert cli_exit_code(args) == 0
    (out / SHARDS / "shard-abc.parquet").write_bytes(b"")
    capsys.readouterr()
    assert cli_exit_code(args) == 1
    err = capsys.readouterr().err
    assert "Error: " in err and "shard-abc.parquet" in err and "Hint: " in err and "Traceback" not in err
