"""The evaluation on Ray Data (local mode) on the tiny export: same answers, resumable after a kill."""

import sys

import pytest

from ilora_export.errors import IloraError
from ilora_export.eval.reference import run_eval
from tests.factories import kill_eval_at_first_shard

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install -e .[ray])")

ROWS, SHARD_ROWS = 48, 4


def _common(tiny_export, toy_data_dir):
    return dict(target=tiny_export[1], data_dir=toy_data_dir, split="train", backend="ort", limit=ROWS,
                shard_rows=SHARD_ROWS, threads=1, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def single(tiny_export, toy_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "eval"
    run_eval(output=out, **_common(tiny_export, toy_data_dir))
    return out


def test_ray_local_mode_gives_the_single_process_answers(single, tiny_export, toy_data_dir, tmp_path):
    out = tmp_path / "ray"
    summary = run_eval(output=out, ray=True, num_workers=2, **_common(tiny_export, toy_data_dir))
    assert summary["ray"] and summary["ray_workers"] == 2 and summary["shards"] == ROWS // SHARD_ROWS
    assert (out / "predictions.csv").read_bytes() == (single / "predictions.csv").read_bytes()
    workers = _shard_workers(out)  # what each shard file records of the actor that wrote it
    assert len(workers) == ROWS // SHARD_ROWS and all(w.rsplit(":", 1)[1].isdigit() for w in workers)
    assert summary["ray_workers_used"] == len(set(workers)) and summary["ray_model_load_s"] > 0


def _shard_workers(out) -> list[str]:
    """The worker (host:pid) written into each shard file's metadata, read with pyarrow alone."""
    import json

    import pyarrow.parquet as pq

    return [json.loads(pq.read_schema(f).metadata[b"ilora_export.shard"])["worker"]
            for f in sorted((out / "shards").glob("shard-*.parquet"))]


def test_killed_ray_run_resumes_to_the_uninterrupted_result(single, tiny_export, toy_data_dir, tmp_path):
    out = tmp_path / "killed"
    args = [str(tiny_export[1]), "--backend", "ort", "--data", str(toy_data_dir), "--split", "train",
            "--limit", str(ROWS), "--shard-rows", str(SHARD_ROWS), "--threads", "1", "--batch-size", "1",
            "--ray", "--num-workers", "1"]
    finished = kill_eval_at_first_shard(args, out, timeout=240)  # the driver and any Ray instance it started
    assert 1 <= finished < ROWS // SHARD_ROWS and not (out / "predictions.csv").exists()
    resumed = run_eval(output=out, ray=True, num_workers=2, **_common(tiny_export, toy_data_dir))
    assert resumed["shards_resumed"] >= finished
    assert (out / "predictions.csv").read_bytes() == (single / "predictions.csv").read_bytes()


def test_ray_needs_an_output_folder_and_the_ort_backend(tiny_export, toy_data_dir):
    common = _common(tiny_export, toy_data_dir)
    with pytest.raises(IloraError, match="output folder") as err:
        run_eval(ray=True, **common)
    assert "-o OUTPUT_DIR" in err.value.hint
    with pytest.raises(IloraError, match="runs the ort backend"):
        run_eval(**(common | {"backend": "torch"}), ray=True, output="unused")


def test_without_ray_the_hint_says_how_to_install(monkeypatch):
    from ilora_export.eval.distributed import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(IloraError) as err:
        import_ray()
    assert "ilora-export[ray]" in err.value.hint
