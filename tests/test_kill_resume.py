"""Slow: training runs and searches killed at random moments and resumed equal unbroken runs.

Runs ``bench/kill_resume.py`` with two runs of each kind (the acceptance run uses ten of each).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_killed_and_resumed_runs_equal_unbroken_ones(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/kill_resume.py", "--train_runs", "2", "--search_runs", "2"]
        + ["--seed", "1", "--work_dir", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind in ("train", "search"):
        assert result[kind]["matched"] == result[kind]["runs"] == 2, result[kind]["details"]
        assert result[kind]["killed"] == 2
    assert result["all_matched"] and proc.returncode == 0
