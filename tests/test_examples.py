import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_evaluate_checkpoint_example_runs(tiny_run, toy_data_dir):
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "evaluate_checkpoint.py"),
            str(tiny_run.checkpoint),
            str(toy_data_dir),
            "--limit",
            "3",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "ValidRatio" in out.stdout and out.stdout.count("<-") == 3
