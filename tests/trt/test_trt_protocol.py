"""The TensorRT build and backend against a stand-in ``tensorrt`` module (tests/trt/fake_tensorrt.py).

These tests check the call protocol on CPU: profiles given and checked, TF32 cleared for fp32, the timing
cache's return checked, every context call's return checked, engine I/O compared with the export's
contract, one activation block for all contexts, the ping-pong cache bound right (the stand-in
executes the ONNX graph with onnxruntime on the bound memory, so wrong bindings change the answers).
They prove nothing about TensorRT itself: no engine has been built or run on a GPU here.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ilora_export.artifacts.engines import engines_export_dir
from ilora_export.trt.build import SCRIPT, TIMING_CACHE, build_engines
from ilora_export.trt.engine import EngineError, import_tensorrt
from ilora_export.trt.profiles import Limits
from tests.trt import fake_tensorrt

LIMITS = Limits(max_batch=4, max_prompt=400, max_new_tokens=64, num_candidates=20)
FACTS = {"gpu": "Stand-in GPU", "compute_capability": "8.7"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_trt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr("ilora_export.trt.build.device_facts", lambda: FACTS)
    monkeypatch.setattr("ilora_export.runtime.trt_backend.device_facts", lambda: FACTS)
    return fake_tensorrt


@pytest.fixture(scope="module")
def evalset(toy_data_dir):
    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset

    return build_eval_set(load_dataset(toy_data_dir), "test", seed=0)


@pytest.fixture(scope="module")
def ort_answers(tiny_export, evalset):
    from ilora_export.eval.answers import evaluate_backend
    from ilora_export.runtime.load import open_backend

    out = evaluate_backend(*open_backend(tiny_export[1], "ort"), evalset, batch_size=4, progress=False)
    return [r["answer"] for r in out.records]


def _open(engines):
    from ilora_export.runtime.load import load_export
    from ilora_export.runtime.trt_backend import TrtBackend

    export = load_export(engines_export_dir(engines))
    return TrtBackend(engines, export, device="cpu"), export.assets


def _answers(engines, evalset):
    from ilora_export.eval.answers import evaluate_backend

    backend, assets = _open(engines)
    out = evaluate_backend(backend, assets, evalset, batch_size=4, progress=False)
    return backend, [r["answer"] for r in out.records]


def _plan(path: Path) -> dict:
    return json.loads(path.read_bytes()[len(fake_tensorrt.MAGIC) :])


def test_built_engines_follow_the_protocol_and_answer_as_ort(fake_trt, tiny_export, evalset, ort_answers, tmp_path):
    logs = []
    eng = build_engines(tiny_export[1], tmp_path / "eng", limits=LIMITS, log=logs.append)
    plan = _plan(eng / "decoder.plan")
    assert plan["tf32"] is False  # fp32 engines keep fp32 matmuls
    assert len(plan["profiles"]) == 2  # prefill, then decode
    assert plan["profiles"][0]["inputs_embeds"][2][1] == LIMITS.max_prompt
    assert plan["profiles"][1]["inputs_embeds"][2][1] == 1
    meta = json.loads((eng / "decoder.json").read_text())
    assert meta["builder"] == "ilora-export" and meta["tensorrt_version"] == fake_trt.__version__
    index = json.loads((eng / "engines.json").read_text())
    assert not Path(index["export"]).is_absolute()  # the export is named relative to the engines folder

    backend, answers = _answers(eng, evalset)
    assert answers == ort_answers
    contexts = [backend.encoder, *backend.contexts]
    assert [c.context.device_memory for c in contexts] == [contexts[0].context.device_memory] * 3  # one block
    assert [c.context.profile for c in backend.contexts] == [0, 1]
    assert all(c.context.calls > 0 for c in contexts)


def test_fp16_engines_keep_tf32_untouched_and_answer(fake_trt, tiny_export_fp16, evalset, tmp_path):
    eng = build_engines(tiny_export_fp16, tmp_path / "eng", fp16=True, limits=LIMITS, log=lambda m: None)
    assert _plan(eng / "decoder.plan")["tf32"] is True  # strongly typed fp16: TF32 is not ours to clear
    _, answers = _answers(eng, evalset)
    assert len(answers) == len(evalset.rows)


def test_calls_tensorrt_refuses_raise_naming_tensor_profile_and_limit(fake_trt, tiny_export, tmp_path):
    import numpy as np

    eng = build_engines(tiny_export[1], tmp_path / "eng", limits=LIMITS, log=lambda m: None)
    backend, _ = _open(eng)
    history = backend.info.manifest["model"]["state_size"]
    seq = np.zeros((1, history), np.int64)
    too_many = np.zeros((1, history + LIMITS.num_candidates + 1), np.int64)  # one candidate beyond the profile
    with pytest.raises(EngineError, match=r"encoder, profile 0 \(encoder\): items of shape \[1, 31\] is refused "):
        backend.encode(seq, np.array([history]), too_many)
    with pytest.raises(EngineError, match=r"max \[4, 30\]") as err:
        backend.encode(seq, np.array([history]), too_many)
    assert "--num-candidates" in err.value.hint
    ctx = backend.contexts[1]
    with pytest.raises(EngineError, match=r"decoder, profile 1 \(decode\): inputs_embeds of shape \[1, 2, 64\]"):
        ctx.set_shape("inputs_embeds", (1, 2, 64))  # decode takes one token
    with pytest.raises(EngineError, match="refused the address of scores"):
        ctx.bind("scores", 1234)
    fresh = backend.contexts[0].engine.create_execution_context(fake_trt.ExecutionContextAllocationStrategy.STATIC)
    from ilora_export.trt.context import CheckedContext

    with pytest.raises(EngineError, match=r"decoder, profile 0 \(prefill\): TensorRT execution failed"):
        CheckedContext(backend.contexts[0].engine, fresh, "decoder", ["prefill", "decode"]).execute(0)
    with pytest.raises(EngineError, match="refused optimization profile 2"):
        CheckedContext(backend.contexts[0].engine, fresh, "decoder", ["prefill", "decode"]).select_profile(2, 0)


def test_load_refuses_engines_that_are_not_the_exports(fake_trt, tiny_export, tmp_path, monkeypatch):
    eng = build_engines(tiny_export[1], tmp_path / "eng", limits=LIMITS, log=lambda m: None)
    _open(eng)  # as built: accepted

    meta_file = eng / "decoder.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta | {"source_manifest_sha256": "0" * 64}))
    with pytest.raises(EngineError, match="built from another export"):
        _open(eng)
    meta_file.write_text(json.dumps(meta))

    plan_file = eng / "decoder.plan"
    blob = plan_file.read_bytes()
    plan = _plan(plan_file)
    renamed = [e | {"name": "scores"} if e["name"] == "logits" else e for e in plan["io"]]
    plan_file.write_bytes(fake_trt.MAGIC + json.dumps(plan | {"io": renamed}).encode())
    with pytest.raises(EngineError, match=r"missing \['logits'\], unexpected \['scores'\]"):
        _open(eng)
    plan_file.write_bytes(blob)

    index_file = eng / "engines.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps(index | {"limits": index["limits"] | {"max_batch": 5}}))
    with pytest.raises(
        EngineError,
        match=r"encoder.plan: .*profile 0 \(encoder\): seq ranges over \[\[1, 10\], \[2, 10\], \[4, 10\]\], "
        r"the limits give \[\[1, 10\], \[2, 10\], \[5, 10\]\]",
    ):
        _open(eng)
    index_file.write_text(json.dumps(index))

    monkeypatch.setattr(fake_trt, "__version__", "10.17.0")  # the plan is from 10.16: TensorRT refuses it
    for graph in ("encoder", "decoder"):  # as the script's metadata: no version named, TensorRT must refuse
        file = eng / f"{graph}.json"
        file.write_text(json.dumps(json.loads(file.read_text()) | {"builder": "trtexec"}))
    with pytest.raises(EngineError, match="could not deserialize"):
        _open(eng)

    monkeypatch.setattr(fake_trt, "__version__", "10.1.0")
    with pytest.raises(EngineError, match="10.0 and 10.1 have a known accuracy issue with two consecutive GEMVs"):
        import_tensorrt()


def test_a_timing_cache_from_another_version_is_replaced_not_trusted(fake_trt, tiny_export, tmp_path, monkeypatch):
    eng = tmp_path / "eng"
    build_engines(tiny_export[1], eng, limits=LIMITS, log=lambda m: None)
    assert (eng / TIMING_CACHE).read_bytes().endswith(b"10.16.0")
    monkeypatch.setattr(fake_trt, "__version__", "10.17.0")
    logs = []
    build_engines(tiny_export[1], eng, limits=LIMITS, log=logs.append)
    assert any("made by another TensorRT version or GPU; this build starts a new one" in m for m in logs)
    assert (eng / TIMING_CACHE).read_bytes().endswith(b"10.17.0")


def test_plans_of_the_emitted_script_load_beside_a_copied_export(fake_trt, tiny_export, evalset, ort_answers, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_export[1], export)
    out = build_engines(export, None, limits=LIMITS, emit_script=True, log=lambda m: None)
    assert out == export / "trt"
    with pytest.raises(EngineError, match=r"encoder.plan: missing") as err:
        _open(out)  # the script has not run yet
    assert "build_engines.sh" in err.value.hint

    moved = tmp_path / "elsewhere" / "export"  # the export and its engines folder copied to the target
    shutil.copytree(export, moved)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trtexec = bin_dir / "trtexec"  # builds a stand-in plan from exactly the arguments trtexec would get
    trtexec.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.trt.stand_in_trtexec import main\n"
        "main(sys.argv)\n"
    )
    trtexec.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(moved / "trt" / SCRIPT)], check=True, env=env, cwd=tmp_path)
    assert engines_export_dir(moved / "trt").resolve() == moved.resolve()
    meta = json.loads((moved / "trt" / "decoder.json").read_text())
    assert meta["builder"] == "trtexec" and "tensorrt_version" not in meta
    _, answers = _answers(moved / "trt", evalset)
    assert answers == ort_answers
