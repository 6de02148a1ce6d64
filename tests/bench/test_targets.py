"""The speed targets read from hand-made bench reports: met, missed at the bound's far side, not measured."""

import re
from pathlib import Path

from ilora_export.bench.targets import TARGETS, check_targets, target_line, targets_markdown


def _report(**changes) -> dict:
    """A report in the shape ``run_bench`` writes, every target met."""
    report = {
        "rows": {"ort": {"prefill_ms": {"512": {"median": 110.0}}, "peak_rss_mb": 1500.0}},
        "floor": {"prefill_ms_floor": {"512": 100.0}},
        "ratios": {"ort": {"decode_vs_floor": 1.2, "eval_speedup_vs_torch_b8": 4.0, "eval_speedup_vs_torch_b1": 3.1}},
        "adapter_cost": {"decode": 0.03},
        "peers": {"genai": {"decode": {"median_ratio": 0.95}}},
    }
    for path, value in changes.items():
        *keys, last = path.split("__")
        d = report
        for k in keys:
            d = d[k]
        d[last] = value
    return report


def _by_key(entries):
    return {e["key"]: e for e in entries}


def test_every_target_met():
    entries = check_targets(_report())
    assert [e["key"] for e in entries] == [t.key for t in TARGETS]
    assert {e["key"]: e["status"] for e in entries} == {t.key: "met" for t in TARGETS}
    got = _by_key(entries)
    assert got["prefill_512_vs_floor"]["value"] == 1.1 and got["prefill_512_vs_floor"]["op"] == "<="
    assert got["decode_vs_genai"]["value"] == 0.95
    assert got["eval_speedup_b8"]["op"] == ">=" and got["peak_rss"]["value"] == 1500.0


def test_bounds_are_inclusive_and_missed_beyond():
    at_bound = _report(
        ratios__ort__decode_vs_floor=1.25,
        ratios__ort__eval_speedup_vs_torch_b8=3.5,
        ratios__ort__eval_speedup_vs_torch_b1=3.0,
        adapter_cost__decode=0.05,
        peers__genai__decode__median_ratio=1.0,
    )
    at_bound["rows"]["ort"]["peak_rss_mb"] = 1900.0
    assert {e["status"] for e in check_targets(at_bound)} == {"met"}
    beyond = _report(
        ratios__ort__decode_vs_floor=1.26,
        ratios__ort__eval_speedup_vs_torch_b8=3.49,
        ratios__ort__eval_speedup_vs_torch_b1=2.9,
        adapter_cost__decode=0.051,
        peers__genai__decode__median_ratio=1.01,
    )
    beyond["rows"]["ort"] = {"prefill_ms": {"512": {"median": 116.0}}, "peak_rss_mb": 1901.0}
    assert {e["key"]: e["status"] for e in check_targets(beyond)} == {t.key: "missed" for t in TARGETS}


def test_not_measured_when_the_rows_were_not_run():
    # only the plain row and a short prompt: nothing the targets read
    report = {
        "rows": {"ort-plain": {"prefill_ms": {"64": {"median": 10.0}}, "peak_rss_mb": 900.0}},
        "floor": {"prefill_ms_floor": {"64": 9.0}},
        "ratios": {"ort-plain": {"decode_vs_floor": 1.1}},
        "adapter_cost": None,
        "peers": {},
    }
    entries = check_targets(report)
    assert {e["status"] for e in entries} == {"not measured"}
    assert all(e["value"] is None and e["needs"] for e in entries)
    assert _by_key(entries)["decode_vs_genai"]["needs"] == "--peer genai"
    # the default row without 512 tokens, and without the reference: only those targets unmeasured
    partial = _report()
    partial["rows"]["ort"]["prefill_ms"] = {"64": {"median": 10.0}}
    del partial["ratios"]["ort"]["eval_speedup_vs_torch_b8"]
    status = {e["key"]: e["status"] for e in check_targets(partial)}
    assert status.pop("prefill_512_vs_floor") == status.pop("eval_speedup_b8") == "not measured"
    assert set(status.values()) == {"met"}


def test_markdown_and_log_lines():
    entries = check_targets(_report(adapter_cost__decode=0.08, peers={}))
    lines = targets_markdown(entries)
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| target")]
    assert len(table) == len(TARGETS)
    adapter = next(line for line in table if "expert-bank" in line)
    assert adapter.endswith("| +8.0% | <= +5.0% | missed |")
    genai = next(line for line in table if "onnxruntime-genai" in line)
    assert genai.endswith("| - | <= 1.00x | not measured (needs --peer genai) |")
    assert target_line(_by_key(entries)["peak_rss"]) == "met: peak RSS of the default ORT row: 1500 MB (<= 1900 MB)"


def test_the_benchmarks_readme_lists_every_target_with_its_bound():
    readme = Path(__file__).resolve().parents[2] / "benchmarks" / "README.md"
    rows = {
        m.group(1).strip(): m.group(2).strip()
        for m in re.finditer(r"^\| (.+?) \| ((?:<=|>=) [^|]+) \|$", readme.read_text(encoding="utf-8"), re.M)
    }
    assert rows == {t.text: f"{'<=' if t.at_most else '>='} {t.show(t.bound)}" for t in TARGETS}
