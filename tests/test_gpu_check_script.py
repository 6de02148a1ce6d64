"""scripts/gpu_check.py: its --help, and a run of its logic where no GPU is present: every GPU backend is
listed as not run, with its reason, PyTorch on CPU runs with --cpu-reference, the versions are recorded,
and the export folder is left as it was."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_help_lists_the_options():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--work", "--batch-size", "--export", "--fp16-export"):
        assert option in result.stdout


def test_a_batch_size_below_one_is_refused_before_anything_runs(gpu_check, tmp_path, capsys):
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit) as info:
        gpu_check.main(["--checkpoint", "C", "--export", "E", "--data", "D", "--batch-size", "0", "--out", str(out)])
    assert info.value.code != 0
    assert "--batch-size" in capsys.readouterr().err
    assert not out.exists()


def test_without_a_gpu_every_gpu_backend_is_listed_as_not_run(gpu_check, tiny_export, toy_data_dir, tmp_path):
    import onnxruntime
    import torch

    ckpt, export = tiny_export
    before = _files(Path(export))
    out = tmp_path / "report.json"
    work = tmp_path / "work"
    args = f"--checkpoint {ckpt} --export {export} --fp16-export {export} --data {toy_data_dir} --limit 2"
    gpu_check.main([*args.split(), "--batch-size", "2", "--cpu-reference", "--work", str(work), "--out", str(out)])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["rows"] == 2
    assert list(report["runs"]) == ["torch-cpu"]  # the one backend this machine runs
    cpu = report["runs"]["torch-cpu"]
    assert len(cpu["answers"]) == 2 and cpu["identical_to_torch_cpu"] == 2
    assert "identical_to_torch_cuda" not in cpu  # no CUDA reference to compare with
    assert "no CUDA device" in report["skipped"]["torch-cuda"]
    assert "CUDA provider" in report["skipped"]["ort-cuda"]
    assert "TensorRT is not importable" in report["skipped"]["trt"]
    machine = report["machine"]
    assert machine["torch"] == torch.__version__
    assert machine["onnxruntime"] == onnxruntime.__version__
    assert machine["onnxruntime_providers"] == onnxruntime.get_available_providers()
    assert machine["tensorrt"] is None
    assert machine["cuda"] == torch.version.cuda
    assert machine["gpu"] is None
    assert report["work"] == str(work)
    assert report["limits"]["max_batch"] == 2
    assert _files(Path(export)) == before  # nothing written into (or touched in) the export folder
