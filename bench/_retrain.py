"""What the retraining benches share: a run's metrics, and one training run continued until it is done."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """The rows of ``run/metrics.csv`` (none when the run has not finished an epoch)."""
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train(run: Path, new: list[str], always: list[str] = ()) -> dict[str, Any]:
    """Run ``architecture_main_file.py`` for ``run``: resumed from its ``last.pth`` if it has one, else
    started with the flags ``new``; ``always`` is passed either way. Returns the run's JSON summary."""
    cmd = [sys.executable, str(ROOT / "architecture_main_file.py")]
    if (run / "last.pth").is_file():
        cmd += ["--resume", str(run / "last.pth")]
    else:
        cmd += [*new, "--log_dir", str(run.parent), "--run_name", run.name]
    cmd += [*always, "--progress", "False"]
    print(f"{run.name}: {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{run.name}: the run failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])
