"""The evaluation on Ray Data (local mode) on the tiny export: same answers, resumable after a kill."""

import sys

import pytest

from ilora_export.errors import IloraError
from ilora_export.eval.request import EvalRequest
from ilora_export.eval.run import run_eval
from tests.factories import kill_eval_at_first_shard

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install -e .[ray])")

ROWS, SHARD_ROWS = 48, 4


def _request(tiny_export, toy_data_dir, **fields) -> EvalRequest:
    return EvalRequest(
        tiny_export[1],
        toy_data_dir,
        "train",
        backend="ort",
        limit=ROWS,
        shard_rows=SHARD_ROWS,
        threads=1,
        batch_size=2,
        **fields,
    )


@pytest.fixture(scope="module")
def single(tiny_export, toy_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "eval"
    run_eval(_request(tiny_export, toy_data_dir, output=out), progress=False)
    return out


def test_ray_local_mode_gives_the_single_process_answers(single, tiny_export, toy_data_dir, tmp_path):
    out = tmp_path / "ray"
    summary = run_eval(_request(tiny_export, toy_data_dir, output=out, ray=True, num_workers=2), progress=False)
    assert summary["ray"] and summary["ray_workers"] == 2 and summary["shards"] == ROWS // SHARD_ROWS
    assert (out / "predictions.csv").read_bytes() == (single / "predictions.csv").read_bytes()
    workers = _shard_workers(out)  # what each shard file records of the actor that wrote it
    assert len(workers) == ROWS // SHARD_ROWS and all(w.rsplit(":", 1)[1].isdigit() for w in workers)
    assert summary["ray_workers_used"] == len(set(workers)) and summary["ray_model_load_s"] > 0


def _shard_workers(out) -> list[str]:
    """The worker (host:pid) written into each shard file's metadata, read with pyarrow alone."""
    import json

    import pyarrow.parquet as pq

    return [
        json.loads(pq.read_schema(f).metadata[b"ilora_export.shard"])["worker"]
        for f in sorted((out / "shards").glob("shard-*.parquet"))
    ]


def test_killed_ray_run_resumes_to_the_uninterrupted_result(single, tiny_export, toy_data_dir, tmp_path):
    out = tmp_path / "killed"
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
        "--ray",
        "--num-workers",
        "1",
    ]
    finished = kill_eval_at_first_shard(args, out, timeout=240)  # the driver and any Ray instance it started
    assert 1 <= finished < ROWS // SHARD_ROWS and not (out / "predictions.csv").exists()
    resumed = run_eval(_request(tiny_export, toy_data_dir, output=out, ray=True, num_workers=2), progress=False)
    assert resumed["shards_resumed"] >= finished
    assert (out / "predictions.csv").read_bytes() == (single / "predictions.csv").read_bytes()


def test_actors_are_handed_the_request_and_the_rows_not_the_output_files(single, tiny_export, toy_data_dir, tmp_path):
    """ray_evaluate alone, on a folder that holds neither run.json nor evalset.jsonl and with the prompt
    file gone: the actors evaluate from what they are given (the request, the store, the rows, the templates)."""
    from ilora_export.data.evalset import read_eval_set
    from ilora_export.data.prompts import default_templates, load_prompt_file
    from ilora_export.eval.distributed import ray_evaluate
    from ilora_export.eval.shards import RUN, ShardStore

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(t + "\n" for t in default_templates().templates), encoding="utf-8")
    out = tmp_path / "given"
    request = _request(tiny_export, toy_data_dir, output=out, ray=True, num_workers=2, prompt_file=prompts)
    evalset = read_eval_set(single / "evalset.jsonl")
    store = ShardStore.for_request(request, evalset)
    store.open()
    templates = load_prompt_file(prompts)
    (out / RUN).unlink()
    prompts.unlink()
    used = ray_evaluate(request, store, evalset.rows, store.pending(), templates=templates)
    assert sorted(p.name for p in out.iterdir()) == ["shards"]
    records, _ = store.collect()
    assert [r["row_id"] for r in records] == [r.row_id for r in evalset.rows]
    assert _answers(single) == [r["answer"] for r in records]  # the default templates, as in the single run
    assert used["ray_workers"] == 2 and used["ray_threads_per_worker"] == 1


def _answers(out) -> list[str]:
    import csv

    with open(out / "predictions.csv", encoding="utf-8", newline="") as f:
        return [row["answer"] for row in csv.DictReader(f)]


def test_without_ray_the_hint_says_how_to_install(monkeypatch):
    from ilora_export.eval.distributed import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(IloraError) as err:
        import_ray()
    assert "ilora-export[ray]" in err.value.hint
