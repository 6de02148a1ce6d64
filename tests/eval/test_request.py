"""EvalRequest: every user mistake refused when built (all of them at once), and an identity that
changes with what the answers depend on and with nothing else."""

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from ilora_export.artifacts.kinds import EXPORT_FORMAT
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.errors import IloraError
from ilora_export.eval.request import DEFAULT_SHARD_ROWS, EvalRequest
from tests.factories import cli_exit_code


@pytest.mark.parametrize(
    "fields, message, hint",
    [
        (
            {"ray": True, "backend": "ort"},
            "--ray writes its results per shard into an output folder",
            "add -o OUTPUT_DIR",
        ),
        (
            {"ray": True, "output": "out"},
            "--ray runs the ort backend (not torch)",
            "export first and pass --backend ort",
        ),
        (
            {"ray": True, "output": "out", "backend": "trt"},
            "--ray runs the ort backend (not trt)",
            "export first and pass --backend ort",
        ),
        ({"shard_rows": 0}, "--shard-rows must be >= 1, got 0", "64 is a good default"),
        ({"batch_size": 0}, "--batch-size must be >= 1, got 0", "leave --batch-size out for its default"),
        ({"limit": -2}, "--limit must be >= 1, got -2", "leave --limit out for its default"),
        ({"threads": 0}, "--threads must be >= 1, got 0", "leave --threads out for its default"),
        ({"num_workers": 0}, "--num-workers must be >= 1, got 0", "leave --num-workers out for its default"),
        (
            {"backend": "onnx"},
            "--backend must be one of torch, ort, trt, got 'onnx'",
            "torch for a checkpoint, ort for an export, trt for an engines folder",
        ),
        ({"device": "tpu"}, "--device must be one of cpu, cuda, got 'tpu'", "--device cpu runs anywhere"),
    ],
)
def test_one_mistake_is_refused_with_its_message_and_hint(fields, message, hint):
    with pytest.raises(IloraError) as err:
        EvalRequest("model", "data", **fields)
    assert (err.value.message, err.value.hint) == (message, hint)


def test_every_mistake_is_reported_at_once():
    with pytest.raises(IloraError) as err:
        EvalRequest("model", "data", ray=True, shard_rows=0, batch_size=0)
    assert err.value.message.splitlines() == [
        "4 problems with this evaluation:",
        "  - --batch-size must be >= 1, got 0",
        "  - --shard-rows must be >= 1, got 0",
        "  - --ray writes its results per shard into an output folder",
        "  - --ray runs the ort backend (not torch)",
    ]
    assert err.value.hint == (
        "leave --batch-size out for its default; 64 is a good default; add -o OUTPUT_DIR; "
        "export first and pass --backend ort"
    )


def test_a_valid_request_is_a_plain_value():
    request = EvalRequest(Path("model"), "data", "valid", backend="ort", output="out", ray=True, shard_rows=None)
    assert request.shard_rows == DEFAULT_SHARD_ROWS  # None: the default
    assert pickle.loads(pickle.dumps(request)) == request and hash(request) == hash(replace(request))
    with pytest.raises(AttributeError):
        request.limit = 3  # frozen
    resolved = request.resolved()
    assert resolved.target == str(Path("model").resolve()) and resolved.output == str(Path("out").resolve())
    assert resolved.eval_set is None and resolved.split == "valid" and resolved.ray


def test_cli_prints_the_request_problems_as_error_and_hint(tmp_path, capsys):
    base = ["eval", str(tmp_path / "model"), "--data", str(tmp_path / "data")]
    assert cli_exit_code([*base, "--ray", "--backend", "ort"]) == 1
    err = capsys.readouterr().err
    assert err == ("Error: --ray writes its results per shard into an output folder\nHint: add -o OUTPUT_DIR\n")
    assert cli_exit_code([*base, "--ray"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: 2 problems with this evaluation:\n  - --ray writes") and "Traceback" not in err
    assert "  - --ray runs the ort backend (not torch)\n" in err
    assert "\nHint: add -o OUTPUT_DIR; export first and pass --backend ort\n" in err
    assert not (tmp_path / "model").exists() and not (tmp_path / "data").exists()


def _fake_export(folder: Path, content: str = "") -> Path:
    """A folder that names itself an export (what the identity hashes is its manifest.json)."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": EXPORT_FORMAT, "note": content}), encoding="utf-8")
    return folder


@pytest.fixture
def identity_case(tmp_path, toy_data_dir):
    export = _fake_export(tmp_path / "export")
    evalset = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    request = EvalRequest(export, toy_data_dir, "test", backend="ort", output=tmp_path / "out", shard_rows=4)
    return request, evalset, tmp_path


def test_identity_ignores_what_the_answers_do_not_depend_on(identity_case):
    request, evalset, tmp_path = identity_case
    identity = request.identity(evalset)
    assert identity["backend"] == "ort" and identity["shard_rows"] == 4 and identity["prompt_file_sha256"] is None
    assert identity["model"]["index"] == "manifest.json" and len(identity["evalset_sha256"]) == 64
    for changes in (
        {"threads": 3},
        {"num_workers": 5},
        {"address": "ray://head:10001"},
        {"output": tmp_path / "o2"},
        {"restart": True},
        {"replace_other": True},
        {"ray": True},
        {"batch_size": 1},
        {"allow_catalogue_mismatch": True},
    ):
        assert replace(request, **changes).identity(evalset) == identity, changes
    assert request.resolved().identity(evalset) == identity


def test_identity_changes_with_what_the_answers_depend_on(identity_case, toy_data_dir):
    request, evalset, tmp_path = identity_case
    identity = request.identity(evalset)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("History: [HistoryHere] Candidates: [CansHere]\n", encoding="utf-8")
    bank = tmp_path / "bank.safetensors"
    bank.write_bytes(b"bank")
    other = _fake_export(tmp_path / "other", "another export")
    differ = {}
    for name, changes in {
        "backend": {"backend": "torch"},
        "device": {"device": "cuda"},
        "shard_rows": {"shard_rows": 5},
        "prompt_file_sha256": {"prompt_file": prompts},
        "model": {"bank": bank},
    }.items():
        changed = replace(request, **changes).identity(evalset)
        differ[name] = sorted(k for k in identity if changed[k] != identity[k])
    assert differ == {name: [name] for name in differ}
    assert replace(request, bank=bank).identity(evalset)["model"]["bank_sha256"] is not None
    assert replace(request, target=other).identity(evalset)["model"]["sha256"] != identity["model"]["sha256"]
    reseeded = build_eval_set(load_dataset(toy_data_dir), "test", seed=1)
    assert request.identity(reseeded)["evalset_sha256"] != identity["evalset_sha256"]
    fewer = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    fewer.rows = fewer.rows[:3]  # --limit
    assert request.identity(fewer)["evalset_sha256"] != identity["evalset_sha256"]
