"""Everything around the TensorRT engine build that runs without TensorRT or a GPU."""

import json
import os
import subprocess
import sys

import pytest

from ilora_export.artifacts.manifest import read_manifest
from ilora_export.trt.binding import BindingPlan
from ilora_export.trt.build import SCRIPT, build_engines
from ilora_export.trt.engine import EngineError, check_metadata
from ilora_export.trt.profiles import Limits, engine_profiles
from tests.factories import cli_exit_code
from tests.trt.trtexec_args import TrtexecArgError, parse_build_args

LIMITS = Limits(max_batch=4, max_prompt=300, max_new_tokens=16, num_candidates=20)


def _trt_available():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def test_profiles_follow_manifest_and_limits(tiny_export):
    info = read_manifest(tiny_export[1])
    p = engine_profiles(info, LIMITS)
    prefill, decode = p["decoder"]["prefill"], p["decoder"]["decode"]
    assert list(p["decoder"]) == ["prefill", "decode"]  # profile 0 prefill, 1 decode
    assert prefill["inputs_embeds"] == ((1, 1, 64), (2, 150, 64), (4, 300, 64))
    # the cache's capacity reaches prompt + new tokens in both profiles
    assert prefill["past_key_values.0.key"] == ((1, 2, 1, 16), (2, 2, 166, 16), (4, 2, 316, 16))
    assert prefill["cache_position"] == ((1,), (150,), (300,)) and prefill["row_start"][2] == (4,)
    assert decode["inputs_embeds"][0][1] == decode["inputs_embeds"][2][1] == 1  # one token
    assert decode["past_key_values.1.value"][2] == (4, 2, 316, 16)
    assert decode["cache_position"] == ((1,), (1,), (1,))
    for profile in (prefill, decode):  # the expert bank is fixed: min = opt = max = its stacked shape
        assert profile["bank.lora_A.q_proj"] == ((2, 64, 8),) * 3  # A^T: [L, in, r]
        assert set(profile) == set(info.decoder.input_names)
    enc = p["encoder"]["encoder"]
    assert enc["seq"][2] == (4, 10) and enc["items"][1] == (2, 30)


def _run_script_with_recording_trtexec(folder, tmp_path) -> list[list[str]]:
    """Run ``folder/build_engines.sh`` with a stand-in ``trtexec`` first on PATH that records its argv (as
    bash passes it) and writes the --saveEngine file; the recorded command lines, in call order."""
    bin_dir, log = tmp_path / "bin", tmp_path / "trtexec-calls"
    bin_dir.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    stand_in = bin_dir / "trtexec"
    stand_in.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"log = {str(log)!r}\n"
        "n = len(os.listdir(log))\n"
        "json.dump(sys.argv, open(os.path.join(log, f'{n:03d}.json'), 'w'))\n"
        "for a in sys.argv[1:]:\n"
        "    if a.startswith('--saveEngine='):\n"
        "        open(a.split('=', 1)[1], 'wb').write(b'plan')\n"
    )
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(folder / SCRIPT)], check=True, env=env, cwd=tmp_path)
    return [json.loads(f.read_text()) for f in sorted(log.iterdir())]


def test_trtexec_rules_checker_accepts_the_profile_grammar_only():
    good = ["trtexec", "--onnx=m.onnx", "--profile=0", "--minShapes=x:1x2", "--optShapes=x:2x2", "--maxShapes=x:4x2"]
    good += ["--profile=1", "--maxShapes=x:4x1", "--minShapes=x:1x1", "--optShapes=x:2x1"]
    assert parse_build_args(good)["profiles"] == [{"x": ((1, 2), (2, 2), (4, 2))}, {"x": ((1, 1), (2, 1), (4, 1))}]
    single = ["trtexec", "--minShapes=x:1x2", "--optShapes=x:2x2", "--maxShapes=x:4x2"]
    assert len(parse_build_args(single)["profiles"]) == 1
    two_groups = single + ["--minShapes=x:1x1", "--optShapes=x:2x1", "--maxShapes=x:4x1"]
    with pytest.raises(TrtexecArgError, match="without --profile are not allowed"):
        parse_build_args(two_groups)
    with pytest.raises(TrtexecArgError, match="cannot be the same"):
        parse_build_args(good[:6] + ["--profile=0"] + good[7:])
    with pytest.raises(TrtexecArgError, match="missing shape spec"):
        parse_build_args(["trtexec"] + good[6:])  # profile 1 without a profile 0
    with pytest.raises(TrtexecArgError, match="Unknown option"):
        parse_build_args(["trtexec", "--fp32"])


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_emitted_script_follows_trtexec_rules_and_builds_loadable_plans(tiny_export, tiny_export_fp16, tmp_path, dtype):
    export = tiny_export[1] if dtype == "fp32" else tiny_export_fp16
    info = read_manifest(export)
    out = build_engines(
        export, tmp_path / "eng", fp16=dtype == "fp16", limits=LIMITS, emit_script=True, log=lambda m: None
    )
    subprocess.run(["bash", "-n", str(out / SCRIPT)], check=True)  # valid bash
    calls = _run_script_with_recording_trtexec(out, tmp_path)
    assert [os.path.basename(c[0]) for c in calls] == ["trtexec", "trtexec"]
    for argv, graph in zip(calls, ("encoder", "decoder")):
        parsed = parse_build_args(argv)  # raises where trtexec would stop
        opts = parsed["options"]
        assert "--stronglyTyped" in opts and opts["--saveEngine"] == f"{graph}.plan"
        assert opts["--timingCacheFile"] == "timing.cache"
        assert ("--noTF32" in opts) == (dtype == "fp32")  # fp32 engines keep fp32 matmuls
        assert (out / opts["--onnx"]).resolve() == (export / f"{graph}.onnx").resolve()
        assert parsed["profiles"] == list(engine_profiles(info, LIMITS)[graph].values())
    index = json.loads((out / "engines.json").read_text())
    assert index["limits"]["max_prompt"] == 300 and index["dtype"] == info.dtype


def test_binding_plan_ping_pongs_a_preallocated_cache(tiny_export):
    plan = BindingPlan(read_manifest(tiny_export[1]), LIMITS)
    sizes = plan.buffers()
    assert set(sizes) == {f"{n}#{i}" for n in plan.past_names for i in (0, 1)} | {"logits"}
    assert sizes["past_key_values.0.key#0"] == 4 * 2 * 316 * 16
    capacity = plan.capacity(280)
    assert capacity == 296
    steps = [plan.step(0, 3, 280, capacity, 280)] + [plan.step(i, 3, 1, capacity, 280 + i) for i in range(1, 17)]
    assert steps[0].profile == 0 and all(s.profile == 1 for s in steps[1:])
    for prev, cur in zip(steps, steps[1:]):
        assert cur.read == prev.write and cur.write != cur.read  # the present becomes the next past
        assert cur.cache_shape == prev.cache_shape == (3, 2, 296, 16)  # one capacity for the whole generation
    assert all(s.cache_elems <= sizes["past_key_values.0.key#0"] for s in steps)
    assert steps[-1].input_shapes["cache_position"] == (1,) and steps[0].input_shapes["cache_position"] == (280,)
    assert steps[-1].input_shapes["row_start"] == (3,)
    assert steps[0].input_shapes["bank.lora_B.v_proj"] == (2, 8, 32)  # B^T, bound once, same every step
    with pytest.raises(EngineError, match="--max-prompt"):
        plan.step(0, 1, 301, plan.capacity(301), 301)
    with pytest.raises(EngineError, match="--max-batch"):
        plan.step(1, 5, 1, capacity, 10)
    with pytest.raises(EngineError, match="--max-new-tokens"):
        plan.step(17, 1, 1, capacity, 297)


def test_engine_built_elsewhere_is_refused():
    meta = {"tensorrt_version": "10.3.0", "gpu": "NVIDIA Jetson Orin", "compute_capability": "8.7"}
    check_metadata(meta, trt_version="10.3.0", gpu="NVIDIA Jetson Orin", compute_capability="8.7", plan="e.plan")
    with pytest.raises(EngineError, match="built with TensorRT 10.3.0, this is 11.0.0"):
        check_metadata(meta, trt_version="11.0.0", gpu="NVIDIA Jetson Orin", compute_capability="8.7", plan="e.plan")
    with pytest.raises(EngineError, match="built for NVIDIA Jetson Orin .*this is NVIDIA H100"):
        check_metadata(meta, trt_version="10.3.0", gpu="NVIDIA H100", compute_capability="9.0", plan="e.plan")


def test_fp16_needs_the_fp16_export(tiny_export, tmp_path, capsys):
    assert cli_exit_code(["trt", str(tiny_export[1]), "--fp16", "--emit-script", "-o", str(tmp_path)]) == 1
    assert "--dtype fp16" in capsys.readouterr().err


@pytest.mark.skipif(_trt_available(), reason="TensorRT is installed here")
def test_without_tensorrt_the_command_says_what_is_missing(tiny_export, toy_data_dir, tmp_path, capsys):
    assert cli_exit_code(["trt", str(tiny_export[1]), "-o", str(tmp_path / "eng")]) == 1
    err = capsys.readouterr().err
    assert "TensorRT is not importable" in err and "--emit-script" in err and "Traceback" not in err
    assert cli_exit_code(["trt", str(tiny_export[1]), "--emit-script", "-o", str(tmp_path / "eng")]) == 0
    assert (tmp_path / "eng" / SCRIPT).is_file()
    capsys.readouterr()
    assert cli_exit_code(["eval", str(tmp_path / "eng"), "--backend", "trt", "--data", str(toy_data_dir)]) == 1
    assert "TensorRT is not importable" in capsys.readouterr().err


@pytest.mark.gpu
def test_trt_backend_answers_as_ort(tiny_export, toy_data_dir, tmp_path):
    if not _trt_available():
        pytest.skip("TensorRT is not importable (see docs/tensorrt.md)")
    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.eval.answers import evaluate_backend
    from ilora_export.runtime.load import open_backend

    eng = build_engines(tiny_export[1], tmp_path / "eng", limits=LIMITS, log=lambda m: None)
    evalset = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    ref = evaluate_backend(*open_backend(tiny_export[1], "ort"), evalset, progress=False)
    got = evaluate_backend(*open_backend(eng, "trt"), evalset, progress=False)
    assert [r["answer"] for r in got.records] == [r["answer"] for r in ref.records]


def test_supported_tensorrt_versions_and_the_trt_extra_agree():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from ilora_export.trt.engine import MIN_TENSORRT, version_problem

    assert "GEMV" in version_problem("tensorrt", "10.1.0")
    assert "GEMV" in version_problem("tensorrt", "8.6.1")
    assert version_problem("tensorrt", "10.2.0") is None and version_problem("tensorrt", "11.4.0.106") is None
    assert version_problem("tensorrt_rtx", "1.0.0") is None  # TensorRT-RTX numbers its releases apart
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert f"tensorrt>={'.'.join(map(str, MIN_TENSORRT))}" in extras["trt"]
    assert any(r.startswith("onnxruntime-gpu") for r in extras["gpu"])
    assert not any(r.startswith("onnxruntime>") for r in extras["gpu"])  # never both onnxruntime packages


def test_recorded_limits_are_checked_before_use():
    from ilora_export.errors import IloraError

    record = {"max_batch": 4, "max_prompt": 300, "max_new_tokens": 16, "num_candidates": 20}
    assert Limits.from_record(record, "engines.json") == LIMITS
    for bad in (None, record | {"max_batch": "4"}, record | {"extra": 1}, {"max_batch": 4}, record | {"max_prompt": 0}):
        with pytest.raises(IloraError, match="engines.json|positive"):
            Limits.from_record(bad, "engines.json")
