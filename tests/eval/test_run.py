"""``run_eval`` on a request: the files it writes, the summary, the CLI over it."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ilora_export.data.evalset import read_eval_set
from ilora_export.errors import IloraError
from ilora_export.eval.metrics import judge
from ilora_export.eval.request import EvalRequest
from ilora_export.eval.run import run_eval
from tests.factories import cli_exit_code


def test_eval_writes_per_sample_csv_and_summary(tiny_run, toy_data_dir, tmp_path):
    out = tmp_path / "eval"
    summary = run_eval(EvalRequest(tiny_run.checkpoint, toy_data_dir, "test", batch_size=4, output=out), progress=False)
    rows = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))
    assert len(rows) == summary["rows"] == 12
    saved = json.loads((out / "summary.json").read_text())
    assert saved["valid_ratio"] == summary["valid_ratio"]
    # the summary is recomputable from the per-sample file with the official judgement
    valid = sum(judge(r["answer"], r["target"], json.loads(r["candidates"])).valid for r in rows)
    assert valid == summary["valid"]
    evalset = read_eval_set(out / "evalset.jsonl")
    assert [r.row_id for r in evalset.rows] == [int(r["row_id"]) for r in rows]
    hits = _sasrec_hits(tiny_run.checkpoint, evalset.rows)
    assert summary["sasrec_hit_ratio@1"] == hits / 12
    assert summary["backend"] == "torch" and summary["batch_size"] == 4 and summary["shard_rows"] == 64


def test_output_folder_is_fingerprinted_by_the_request_identity(tiny_run, toy_data_dir, tmp_path):
    out = tmp_path / "eval"
    request = EvalRequest(tiny_run.checkpoint, toy_data_dir, "test", limit=4, shard_rows=2, output=out)
    first = run_eval(request, progress=False)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["identity"] == request.identity(read_eval_set(out / "evalset.jsonl"))
    # fields the answers do not depend on: the finished shards are this evaluation's, none is redone
    again = run_eval(replace(request, threads=1, batch_size=1, num_workers=3), progress=False)
    assert again["shards_resumed"] == again["shards"] == 2 and again["threads"] == 1
    assert {k: again[k] for k in ("valid", "correct", "rows")} == {k: first[k] for k in ("valid", "correct", "rows")}
    with pytest.raises(IloraError, match=r"another evaluation \(differs in: shard_rows\)"):
        run_eval(replace(request, shard_rows=1), progress=False)


def _sasrec_hits(checkpoint, rows) -> int:
    """How many rows' target is SASRec's best-scored candidate, from the checkpoint's SASRec weights alone
    (its logits over the whole catalogue, then the candidates' columns)."""
    from ilora_export.artifacts.checkpoint import SASREC, read_checkpoint
    from ilora_export.checkpoint.format import read_tensors
    from ilora_export.model.sasrec import SASRec

    sasrec = SASRec(**read_checkpoint(checkpoint).config["sasrec"])
    sasrec.load_state_dict(read_tensors(Path(checkpoint) / SASREC))
    seq = torch.tensor([r.seq for r in rows])  # [B, L]
    candidates = torch.tensor([r.candidates for r in rows])  # [B, N]
    with torch.no_grad():
        logits = sasrec.eval()(seq, torch.tensor([r.len_seq for r in rows]))  # [B, items]
    picks = candidates.gather(1, logits.gather(1, candidates).argmax(-1, keepdim=True))[:, 0]  # [B]
    return sum(int(p) == r.target for p, r in zip(picks, rows))


def test_cli_eval_prints_metrics_and_errors_have_hints(tiny_run, toy_data_dir, tmp_path, capsys):
    assert (
        cli_exit_code(
            ["eval", str(tiny_run.checkpoint), "--data", str(toy_data_dir), "--limit", "3", "-o", str(tmp_path / "o")]
        )
        == 0
    )
    assert "HitRatio@1 (valid)" in capsys.readouterr().out
    assert cli_exit_code(["eval", str(tmp_path / "missing"), "--data", str(toy_data_dir)]) == 1
    err = capsys.readouterr().err
    assert "checkpoint directory not found" in err and "Hint:" in err and "Traceback" not in err
