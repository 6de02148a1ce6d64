"""The paired peer comparison's protocol, with a fake peer script that answers fixed timings.

These tests prove the protocol (build first, then rounds of our worker and the peer back to back, the
same token ids and thread count on both sides, the ratios and their median, the report and the CLI),
not onnxruntime-genai's timings: no peer environment is created, nothing is downloaded.
"""

import json
import statistics
import sys
import textwrap

import numpy as np
import pytest

from ilora_export.bench import peers as peer_tools
from ilora_export.bench.peers import _pip_step, base_vocab_size, draw_token_ids, pair_with_peer
from ilora_export.bench.suite import markdown, run_bench
from ilora_export.bench.worker import _Timer
from ilora_export.errors import IloraError
from tests.factories import cli_exit_code

PEER_PREFILL_MS, PEER_DECODE_MS = 50.0, 2.0


def _fake_peer(tmp_path):
    """A peer script that logs every spec it gets (and its OMP_NUM_THREADS) and answers fixed timings."""
    log = tmp_path / "peer-calls.jsonl"
    script = tmp_path / "fake_peer.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys
            from pathlib import Path

            spec = json.loads(Path(sys.argv[1]).read_text())
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps(spec | {{"env_threads": os.environ["OMP_NUM_THREADS"]}}) + "\\n")
            if spec.get("build_only"):
                out = {{"built": True, "versions": {{"fake-peer": "0"}}}}
            else:
                one = lambda v: {{"median": v, "min": v, "max": v, "n": 1}}
                out = {{
                    "prefill_ms": {{str(len(p)): one({PEER_PREFILL_MS}) for p in spec["prompts"]}},
                    "decode_ms_per_token": one({PEER_DECODE_MS}),
                    "decode_tokens": [0] * (spec["decode_steps"] + 1),
                    "peak_rss_mb": 1.0,
                }}
            Path(sys.argv[2]).write_text(json.dumps(out))
            """
        )
    )
    return script, log


def _calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def _greedy_tokens(export, past_ids, steps):
    """Our export's greedy tokens after ``past_ids``, decoded here (one thread, as the worker)."""
    from ilora_export.artifacts.manifest import read_manifest
    from ilora_export.runtime.load import open_backend

    backend, assets = open_backend(export, "ort", threads=1)
    timer = _Timer(backend, assets, read_manifest(export).shape.num_experts)
    return timer.decode_ids(np.asarray(past_ids, np.int64)[None], steps)[1]


def test_pairing_rounds_time_ours_then_the_peer_on_the_same_ids(tiny_export, tiny_llama_dir, tmp_path):
    _, export = tiny_export
    script, log = _fake_peer(tmp_path)
    logged = []
    result = pair_with_peer(
        export,
        python=sys.executable,
        script=script,
        base_model=tiny_llama_dir,
        work=tmp_path / "peer-work",
        num_experts=4,
        threads=1,
        rounds=3,
        prompt_length=24,
        decode_past=12,
        decode_steps=3,
        log=logged.append,
    )
    prompt, past = draw_token_ids(base_vocab_size(tiny_llama_dir), (24, 12))
    calls = _calls(log)
    # the peer builds its model once, then answers one timing per round
    assert len(calls) == 4 and calls[0]["build_only"] and not any(c.get("build_only") for c in calls[1:])
    assert all(c["model_dir"] == str(tmp_path / "peer-work" / "fp32") and c["precision"] == "fp32" for c in calls)
    for c in calls[1:]:
        assert c["prompts"] == [prompt] and c["decode_prompt"] == past and c["decode_steps"] == 3
        assert c["threads"] == 1 and c["env_threads"] == "1" and c["repeats"] == 1
    # ours ran on the same ids: its greedy tokens are those of that prompt decoded here
    expected = _greedy_tokens(export, past, 3)
    assert len(result["per_round"]) == 3
    for r in result["per_round"]:
        assert r["ours"]["decode_tokens"] == expected and len(expected) == 4
        assert r["peer"]["decode_ms_per_token"] == PEER_DECODE_MS and r["peer"]["prefill_ms"] == PEER_PREFILL_MS
        assert r["decode_ratio"] == r["ours"]["decode_ms_per_token"] / PEER_DECODE_MS
        assert r["prefill_ratio"] == r["ours"]["prefill_ms"] / PEER_PREFILL_MS
        assert r["tokens_identical"] == (expected == [0] * 4)
    assert result["decode"]["ratios"] == [r["decode_ratio"] for r in result["per_round"]]
    assert result["decode"]["median_ratio"] == statistics.median(result["decode"]["ratios"])
    assert result["prefill"]["median_ratio"] == statistics.median(r["prefill_ratio"] for r in result["per_round"])
    assert result["versions"] == {"fake-peer": "0"} and result["rounds"] == 3
    assert sum(line.startswith("  round ") for line in logged) == 3


def test_bench_with_a_peer_pairs_the_plain_export_and_reports_the_target(
    tiny_export, tiny_llama_dir, toy_data_dir, tmp_path, monkeypatch
):
    ckpt, export = tiny_export
    script, log = _fake_peer(tmp_path)
    made = []

    def environment(name, cache, log):  # the environment the suite would create under cache
        made.append((name, cache))
        return sys.executable, script

    monkeypatch.setattr(peer_tools, "peer_environment", environment)
    out = tmp_path / "bench"
    report = run_bench(
        export,
        toy_data_dir,
        checkpoint=ckpt,
        rows=("ort",),
        threads=1,
        repeats=1,
        limit=2,
        prompt_lengths=(16,),
        decode_past=10,
        decode_steps=2,
        batch_sizes=(1,),
        peers=("genai",),
        peer_rounds=2,
        base_model=str(tiny_llama_dir),
        output=out,
        log=lambda m: None,
    )
    assert made == [("genai", out / "exports")]
    # the plain export is made for the pairing even though its row was not asked for
    assert list(report["rows"]) == ["ort"] and (out / "exports" / "plain" / "manifest.json").is_file()
    genai = report["peers"]["genai"]
    assert genai["ours"] == str(out / "exports" / "plain") and genai["rounds"] == 2
    assert genai["prompt_length"] == 16 and genai["decode_past"] == 10 and genai["decode_steps"] == 2
    assert len(_calls(log)) == 3
    target = {t["key"]: t for t in report["targets"]}["decode_vs_genai"]
    assert target["value"] == genai["decode"]["median_ratio"]
    assert target["status"] == ("met" if target["value"] <= 1.0 else "missed")
    saved = json.loads((out / "bench.json").read_text())
    assert saved["peers"]["genai"]["decode"] == genai["decode"] and saved["targets"] == report["targets"]
    md = (out / "bench.md").read_text()
    assert md == markdown(report)
    assert "Paired with onnxruntime-genai" in md and "| median |" in md and "Targets (" in md
    assert "not measured (needs rows ort and torch, batch size 8)" in md


def test_unknown_peer_is_refused(tiny_export, toy_data_dir, tmp_path):
    ckpt, export = tiny_export
    with pytest.raises(IloraError, match="unknown peers"):
        run_bench(export, toy_data_dir, checkpoint=ckpt, rows=(), peers=("vllm",), output=tmp_path, log=print)


def test_a_pip_failure_is_a_user_error_with_a_hint(tmp_path):
    failing = [sys.executable, "-c", "import sys; sys.exit('ERROR: No matching distribution found for x')"]
    with pytest.raises(IloraError, match="No matching distribution") as err:
        _pip_step(failing, tmp_path / "venv", "pip install")
    assert "package registry" in err.value.hint


def test_bench_help_documents_peer(capsys):
    assert cli_exit_code(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--peer [genai]" in out and "--peer-rounds" in out
    assert "timed back to back with our plain export on the same token ids" in " ".join(out.split())


def test_a_folder_that_is_not_ours_is_never_replaced(tmp_path):
    """Neither the peer's environment nor its built model replaces a folder the benchmark did not make."""
    from ilora_export.bench import peer_genai

    venv = tmp_path / "exports" / "peer-genai-venv"
    venv.mkdir(parents=True)
    (venv / "notes.txt").write_text("mine")
    with pytest.raises(IloraError, match="not a virtual environment; refusing") as err:
        peer_tools.ensure_venv(venv, ("numpy",), log=lambda m: None)
    assert "-o" in err.value.hint
    model_dir = tmp_path / "exports" / "peer-genai" / "fp32"
    model_dir.mkdir(parents=True)
    (model_dir / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="was not built here"):
        peer_genai.build(tmp_path / "base", model_dir, "fp32")
    assert (venv / "notes.txt").read_text() == (model_dir / "notes.txt").read_text() == "mine"
