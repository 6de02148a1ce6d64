"""The benchmark suite end to end on the tiny export (structure and agreement, never timings)."""

import json

import numpy as np

from ilora_export.bench.floor import decoder_floor
from ilora_export.bench.suite import ROWS, run_bench
from ilora_export.bench.worker import _Timer
from ilora_export.runtime.generator import PromptAssets
from ilora_export.runtime.torch_backend import TorchBackend
from tests.factories import make_tiny_ilora
from tests.runtime.recording import RecordingBackend


def test_bench_measures_every_row_and_writes_json_markdown(tiny_export, toy_data_dir, tmp_path):
    ckpt, export = tiny_export
    report = run_bench(
        export,
        toy_data_dir,
        checkpoint=ckpt,
        threads=1,
        repeats=2,
        limit=4,
        prompt_lengths=(16, 32),
        decode_past=20,
        decode_steps=3,
        batch_sizes=(1, 2),
        output=tmp_path,
        log=lambda m: None,
    )
    assert list(report["rows"]) == list(ROWS)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"].keys() == report["rows"].keys()
    for r in report["rows"].values():
        assert set(r["prefill_ms"]) == {"16", "32"} and r["decode_ms_per_token"]["n"] == 2
        assert r["peak_rss_mb"] > 0 and r["eval"]["2"]["rows"] == 4
    ratios = report["ratios"]
    # the deployed variants answer exactly as the reference; the plain model is a different model
    for row in ("ort", "ort-folded", "ort-input", "ort-baked"):
        assert ratios[row]["answers_identical_to_torch_b1"] == ratios[row]["answers_identical_to_torch_b2"] == 4
    assert "decode_cost_vs_plain" in ratios["ort"]
    # quantized rows are measured and their agreement counted, but not charged to the adapter
    reference = report["rows"]["torch"]["eval"]
    for kind in ("int8", "int4"):
        row, evals = f"ort-{kind}", report["rows"][f"ort-{kind}"]["eval"]
        assert evals["1"]["answers"] == _answers(tmp_path / "exports" / kind, toy_data_dir, limit=4)  # as here
        for b in ("1", "2"):
            same = sum(x == y for x, y in zip(evals[b]["answers"], reference[b]["answers"], strict=True))
            assert ratios[row][f"answers_identical_to_torch_b{b}"] == same
        assert "decode_cost_vs_plain" not in ratios[row]
    assert json.loads((tmp_path / "exports" / "int8" / "manifest.json").read_text())["quantization"]["bits"] == 8
    # the expert bank's cost, timed in alternation with the plain model in one process
    cost = report["adapter_cost"]
    assert cost["rounds"] == 5 and len(cost["decode_ms_per_token"]) == 2
    assert cost["decode"] == cost["decode_ms_per_token"][0]["median"] / cost["decode_ms_per_token"][1]["median"] - 1
    assert all(r["read_bandwidth_gbs"] > 0 and r["decode_ms_floor"] > 0 for r in report["rows"].values())
    md = (tmp_path / "bench.md").read_text()
    assert "Cost of the expert bank" in md
    assert "ORT, bank folded and fused at load (default)" in md and "floor (this machine)" in md
    assert (tmp_path / "exports" / "plain" / "manifest.json").is_file()
    # the targets: measured where the rows ran, not where a row, length, batch size or peer was left out
    status = {t["key"]: t["status"] for t in saved["targets"]}
    assert report["peers"] == {} and saved["targets"] == report["targets"]
    for key in ("decode_vs_genai", "prefill_512_vs_floor", "eval_speedup_b8"):
        assert status.pop(key) == "not measured"
    assert set(status) == {"decode_vs_floor", "eval_speedup_b1", "adapter_cost_decode", "peak_rss"}
    assert {s in ("met", "missed") for s in status.values()} == {True} and "Targets (" in md


def _answers(export_dir, data_dir, *, limit: int) -> list[str]:
    """The greedy answers of an export on the first ``limit`` test rows one at a time, evaluated here (one
    thread, as the benchmark's workers)."""
    from ilora_export.data.evalset import build_eval_set
    from ilora_export.data.llara import load_dataset
    from ilora_export.eval.answers import evaluate_backend
    from ilora_export.runtime.load import open_backend

    evalset = build_eval_set(load_dataset(data_dir), "test", seed=0)
    evalset.rows = evalset.rows[:limit]
    backend, assets = open_backend(export_dir, "ort", threads=1)
    return [r["answer"] for r in evaluate_backend(backend, assets, evalset, batch_size=1, progress=False).records]


def test_worker_times_the_generators_decode_step(tiny_llama_dir):
    """The timed decode is the generator's: one token per call after the prompt, cache carried, mask and
    positions grown by one; its last logits are those of the whole sequence at once."""
    model = make_tiny_ilora(tiny_llama_dir)
    backend = RecordingBackend(TorchBackend(model))
    timer = _Timer(backend, PromptAssets(model.tokenizer, None, None, model.token_ids), num_experts=4)
    assert timer.decode_ms(past=6, steps=3) > 0
    calls = backend.calls
    assert len(calls) == 4 and calls[0].state_in is None and calls[0].embeds.shape[:2] == (1, 6)
    assert calls[0].cache_position.tolist() == [0, 1, 2, 3, 4, 5] and calls[0].row_start.tolist() == [0]
    for k, (before, call) in enumerate(zip(calls, calls[1:]), start=1):
        assert call.state_in is before.state_out
        assert call.cache_position.tolist() == [5 + k] and call.row_start.tolist() == [0]
        np.testing.assert_array_equal(call.embeds, backend.embed(before.logits.argmax(-1)[:, None]))
    whole = np.concatenate([c.embeds for c in calls], axis=1)  # [1, 9, H]
    logits, _ = TorchBackend(model).step(whole, np.arange(9), np.zeros(1, np.int64), timer.gate, None)
    np.testing.assert_allclose(logits, calls[-1].logits, atol=1e-4, rtol=0)


def test_floor_arithmetic():
    shape = {"num_layers": 2, "num_kv_heads": 1, "head_dim": 4, "vocab_size": 10, "hidden_size": 8}
    f = decoder_floor(shape, weight_bytes=4000, past=5, bandwidth_gbs=1.0, gemm_gflops=1.0, prompt_lengths=[3])
    assert f["decode_bytes_per_token"] == 4000 + 2 * 2 * 1 * 5 * 4 * 4
    assert abs(f["decode_ms_floor"] - f["decode_bytes_per_token"] / 1e9 * 1e3) < 1e-12
    flops = 2 * (1000 - 80) * 3 + 2 * 80 + 4 * 2 * 9 * 8
    assert abs(f["prefill_ms_floor"]["3"] - flops / 1e9 * 1e3) < 1e-12
