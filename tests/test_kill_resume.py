"""Slow: training runs and searches killed at random moments and resumed equal unbroken runs.

Runs ``bench/kill_resume.py`` with two SIGKILL runs and one SIGINT and one SIGTERM run of each kind, each
shorter than the acceptance run's.
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
        + ["--signal_runs", "1", "--train_epochs", "6", "--search_epochs", "4"]
        + ["--seed", "1", "--work_dir", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind in ("train", "search"):
        assert result[kind]["matched"] == result[kind]["runs"] == 4, result[kind]["details"]
        assert result[kind]["killed"]["SIGKILL"] == 2
        for run in result[kind]["details"]:
            if run["signal"] != "SIGKILL" and run["killed"] and not run["after_the_end"]:
                assert run["exit_status"] == {"SIGINT": 130, "SIGTERM": 143}[run["signal"]]
    assert result["all_matched"] and proc.returncode == 0
