"""The main job in one call (``run_quickstart``) on a tiny recipe: summary, its file, reuse, the table."""

import csv
import json

import pytest

from ilora_export.quickstart import format_table, run_quickstart
from tests.conftest import tiny_recipe

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")

LIMIT = 4


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, toy_data_dir, tmp_path_factory):
    """The same recipe run twice in one output folder: (first summary, first log, second summary, second log,
    manifest.json mtime after the first run, output folder)."""
    out = tmp_path_factory.mktemp("quickstart") / "run"
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, out, max_steps=2, save_every=2, eval_rows=0, lr=0.3)
    first_log: list[str] = []
    first = run_quickstart(recipe, limit=LIMIT, threads=1, log=first_log.append)
    exported_at = (out / "onnx" / "manifest.json").stat().st_mtime_ns
    second_log: list[str] = []
    second = run_quickstart(recipe, limit=LIMIT, threads=1, log=second_log.append)
    return first, first_log, second, second_log, exported_at, out


def _answers(eval_dir) -> list[str]:
    with open(eval_dir / "predictions.csv", encoding="utf-8", newline="") as f:
        return [row["answer"] for row in csv.DictReader(f)]


def test_summary_counts_rows_and_identical_answers(runs):
    first, _, second, _, _, out = runs
    torch_answers, ort_answers = _answers(out / "eval-torch"), _answers(out / "eval-ort")
    assert first["rows"] == LIMIT == len(torch_answers) == len(ort_answers)
    assert torch_answers == ort_answers  # the export answers exactly as the checkpoint
    assert first["identical_rows"] == first["rows"]
    assert first["split"] == "test" and first["output_dir"] == str(out)
    assert first["checkpoint"] == str(out / "ckpt") and first["export"] == str(out / "onnx")
    for backend in ("torch", "ort"):  # as the (last) evaluation wrote them
        saved = json.loads((out / f"eval-{backend}" / "summary.json").read_text())
        assert saved["backend"] == backend and saved["rows"] == LIMIT
        assert second["backends"][backend] == {key: saved[key] for key in second["backends"][backend]}


def test_quickstart_json_is_the_returned_summary(runs):
    first, _, second, _, _, out = runs
    assert json.loads((out / "quickstart.json").read_text(encoding="utf-8")) == second
    assert set(first["stages_seconds"]) == {"fetch", "finetune", "export", "eval_torch", "eval_ort"}


def test_second_run_reuses_the_export(runs):
    first, first_log, second, second_log, exported_at, out = runs
    assert not any("up to date, reused" in line for line in first_log)
    export_lines = [line for line in second_log if line.startswith("[3/5] export")]
    assert export_lines == [f"[3/5] export to ONNX -> {out / 'onnx'} (up to date, reused)"]
    assert (out / "onnx" / "manifest.json").stat().st_mtime_ns == exported_at  # not written again
    assert second["stages_seconds"]["export"] < first["stages_seconds"]["export"]
    assert second["stages_seconds"]["export"] <= 1.0
    # the same checkpoint, export and answers
    for key in ("checkpoint", "export", "rows", "identical_rows"):
        assert second[key] == first[key]


def _table_rows(table: str) -> dict[str, list[float]]:
    """backend -> the numbers of its row in a Markdown table of ``format_table``."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("torch", "ort"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


KEYS = ("valid_ratio", "hit_ratio@1_of_valid", "hit_ratio@1_of_total", "sasrec_hit_ratio@1", "wall_seconds")


def _check_table(summary: dict) -> None:
    """format_table(summary) shows the head line, each backend's numbers in their columns, and the stages."""
    table = format_table(summary)
    lines = table.splitlines()
    rows = summary["rows"]
    assert lines[0] == (
        f"{summary['split']} rows: {rows}; answers identical torch vs ort: {summary['identical_rows']}/{rows}"
    )
    rendered = _table_rows(table)
    assert list(rendered) == list(summary["backends"])
    for backend, numbers in rendered.items():
        expected = [summary["backends"][backend][k] for k in KEYS]
        assert numbers[:4] == pytest.approx(expected[:4], abs=5e-5)  # 4 decimals
        assert numbers[4] == pytest.approx(expected[4], abs=0.05)  # 1 decimal
    stages = lines[-1].removeprefix("stages: ").split(", ")
    assert [s.split(" ")[0] for s in stages] == list(summary["stages_seconds"])
    assert [float(s.split(" ")[1]) for s in stages] == pytest.approx(list(summary["stages_seconds"].values()), abs=0.5)


def test_format_table_renders_the_summary(runs):
    _check_table(runs[0])


def test_a_rerun_says_which_stages_it_reused(runs):
    first, _, second, _, _, _ = runs
    assert first["reused"] == []
    assert second["reused"] == ["export", "eval_torch", "eval_ort"]  # every shard read back
    table = format_table(second)
    assert "| torch |" in table and table.count(" (resumed) |") == 2
    assert "export 0 s (reused)" in table.splitlines()[-1] and "finetune" in table.splitlines()[-1]
    assert "(resumed)" not in format_table(first) and "(reused)" not in format_table(first)


def test_format_table_puts_each_number_in_its_column():
    # every value distinct, so a number in the wrong column cannot go unnoticed
    backends = {
        name: dict(zip(KEYS, (0.1 * i + 0.01 * k for k in range(1, 6))))
        for i, name in enumerate(("torch", "ort"), start=1)
    }
    summary = {
        "split": "valid",
        "rows": 7,
        "identical_rows": 5,
        "backends": backends,
        "stages_seconds": {"fetch": 1.0, "finetune": 12.0, "export": 3.0, "eval_torch": 4.0, "eval_ort": 2.0},
    }
    _check_table(summary)
    assert format_table(summary).splitlines()[0] == "valid rows: 7; answers identical torch vs ort: 5/7"
