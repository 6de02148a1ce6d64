"""The speed targets (SmolLM2-135M fp32, ratios from one run) and how a bench report meets them.

``TARGETS`` is the one table of bounds; ``check_targets(report)`` reads each measured value from a
``run_bench`` report and says ``met``, ``missed`` or ``not measured`` (the rows it needs were not run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _get(d, *keys):
    """``d[k1][k2]...``, or None where any level is missing."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def _genai_decode(report: dict) -> float | None:
    return _get(report, "peers", "genai", "decode", "median_ratio")


def _decode_vs_floor(report: dict) -> float | None:
    return _get(report, "ratios", "ort", "decode_vs_floor")


def _prefill_512_vs_floor(report: dict) -> float | None:
    ms = _get(report, "rows", "ort", "prefill_ms", "512", "median")
    floor = _get(report, "floor", "prefill_ms_floor", "512")
    return ms / floor if ms is not None and floor else None


def _eval_speedup(batch: int) -> Callable[[dict], float | None]:
    return lambda report: _get(report, "ratios", "ort", f"eval_speedup_vs_torch_b{batch}")


def _adapter_cost(report: dict) -> float | None:
    return _get(report, "adapter_cost", "decode")


def _peak_rss(report: dict) -> float | None:
    return _get(report, "rows", "ort", "peak_rss_mb")


@dataclass(frozen=True)
class Target:
    key: str
    text: str  # what is measured, in words
    bound: float
    at_most: bool  # True: met when value <= bound; False: when value >= bound
    unit: str  # "x" (a ratio), "%" (a fraction shown in percent), "MB"
    needs: str  # what the measurement needs: rows, batch sizes, an option
    value: Callable[[dict], float | None]

    def show(self, v: float) -> str:
        if self.unit == "%":
            return f"{v:+.1%}"
        if self.unit == "MB":
            return f"{v:.0f} MB"
        return f"{v:.2f}x"


TARGETS = (
    Target(
        "decode_vs_genai",
        "decode ms/token, our plain path / onnxruntime-genai fp32 (paired median)",
        1.00,
        True,
        "x",
        "--peer genai",
        _genai_decode,
    ),
    Target(
        "decode_vs_floor",
        "decode ms/token of the default ORT row / its bandwidth floor",
        1.25,
        True,
        "x",
        "row ort",
        _decode_vs_floor,
    ),
    Target(
        "prefill_512_vs_floor",
        "prefill of 512 tokens of the default ORT row / the GEMM floor",
        1.15,
        True,
        "x",
        "row ort, prompt length 512",
        _prefill_512_vs_floor,
    ),
    Target(
        "eval_speedup_b8",
        "full evaluation at batch 8, default ORT row / PyTorch eager",
        3.5,
        False,
        "x",
        "rows ort and torch, batch size 8",
        _eval_speedup(8),
    ),
    Target(
        "eval_speedup_b1",
        "full evaluation at batch 1, default ORT row / PyTorch eager",
        3.0,
        False,
        "x",
        "rows ort and torch, batch size 1",
        _eval_speedup(1),
    ),
    Target(
        "adapter_cost_decode",
        "expert-bank cost per decode step over the plain model (paired)",
        0.05,
        True,
        "%",
        "rows ort and ort-plain",
        _adapter_cost,
    ),
    Target("peak_rss", "peak RSS of the default ORT row", 1900, True, "MB", "row ort", _peak_rss),
)


def check_targets(report: dict, targets=TARGETS) -> list[dict]:
    """One entry per target: {key, target, value, bound, op, status} with status met / missed / not measured."""
    out = []
    for t in targets:
        v = t.value(report)
        entry = {"key": t.key, "target": t.text, "value": v, "bound": t.bound, "op": "<=" if t.at_most else ">="}
        if v is None:
            entry |= {"status": "not measured", "needs": t.needs}
        else:
            entry["status"] = "met" if (v <= t.bound if t.at_most else v >= t.bound) else "missed"
        out.append(entry)
    return out


def targets_markdown(entries: list[dict], targets=TARGETS) -> list[str]:
    """The "Targets" table of bench.md: one line per target (measured, bound, status)."""
    by_key = {t.key: t for t in targets}
    lines = [
        "Targets (SmolLM2-135M fp32; ratios from this run):",
        "",
        "| target | measured | bound | status |",
        "|---|---|---|---|",
    ]
    for e in entries:
        t = by_key[e["key"]]
        measured = "-" if e["value"] is None else t.show(e["value"])
        status = e["status"] if e["value"] is not None else f"not measured (needs {e['needs']})"
        lines.append(f"| {e['target']} | {measured} | {e['op']} {t.show(e['bound'])} | {status} |")
    return lines


def target_line(entry: dict, targets=TARGETS) -> str:
    """One target in a log line."""
    t = {t.key: t for t in targets}[entry["key"]]
    measured = "-" if entry["value"] is None else t.show(entry["value"])
    return f"{entry['status']}: {entry['target']}: {measured} ({entry['op']} {t.show(entry['bound'])})"
