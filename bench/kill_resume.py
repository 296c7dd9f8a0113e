"""Kill training runs and searches at random moments, resume each until done, compare with unbroken runs.

For each kind (``train``: architecture_main_file.py; ``search``: supernet_main_file.py with a held-out
part, so both write best.pth) one unbroken run is the reference. Each further run is started, stopped
at a moment drawn uniformly between the reference's first file and its end, then resumed (``--resume
RUN/last.pth``; ``--overwrite`` when the stop came before the first checkpoint) until it exits 0. The
stop is SIGKILL (``--train_runs``, ``--search_runs``), or SIGINT and SIGTERM (``--signal_runs`` of each
per kind), where the run must also end with exit status 130 / 143 and one line, no traceback. Moments
are counted in the process's CPU time, so a busy machine does not shift them. Checked against the
reference: last.pth and best.pth (epoch, weights, optimizer state, record of the best), metrics.csv,
thetas.json (search), the final JSON line (bar wall time and folder), and that no temporary file is
left. All runs use the 4-layer ``tiny`` space on synthetic data, one thread each; ``--train_epochs``
and ``--search_epochs`` long, so that most moments fall after the first checkpoint.

    nice -n 15 python bench/kill_resume.py --train_runs 10 --search_runs 10 --signal_runs 5
    python bench/kill_resume.py --help

The last stdout line is JSON: per kind, how many runs matched, and where each kill landed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fbnet_building_blocks.search_space import CANDIDATE_OPS  # noqa: E402
from general_functions.checkpoint import load_checkpoint  # noqa: E402
from supernet_functions.latency.table import LatencyLookupTable  # noqa: E402

log = logging.getLogger("kill_resume")
TICKS = os.sysconf("SC_CLK_TCK")  # /proc CPU times are in clock ticks


EXPECTED_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's 128 + signal number


def commands(work: Path, train_epochs: int, search_epochs: int) -> dict[str, list[str]]:
    """The command line (without --run_name) of each kind of run."""
    arch = work / "tiny_arch.json"
    ops = ["ir_k3_e3", "ir_k5_e1", "skip", "ir_k3_s2"]
    arch.write_text(json.dumps({"name": "tiny_arch", "ops": ops, "search_space": "tiny"}))
    lut = work / "tiny_lut.json"
    rows = [{op: 0.2 + 0.1 * i + 0.03 * j for j, op in enumerate(CANDIDATE_OPS)} for i in range(4)]
    LatencyLookupTable.from_latencies("tiny", rows, fixed_ms={"stem": 0.1, "head": 0.2}).save(lut)
    python = [sys.executable]
    return {
        "train": [
            *python,
            str(REPO / "architecture_main_file.py"),
            *("--preset", "smoke", "--architecture_name", str(arch), "--epochs", str(train_epochs)),
            *("--batch_size", "32", "--train_limit", "160", "--test_limit", "64", "--lr", "0.01"),
            *("--threads", "1", "--progress", "False", "--log_dir", str(work / "runs")),
        ],
        "search": [
            *python,
            str(REPO / "supernet_main_file.py"),
            *("--train_or_sample", "train", "--preset", "smoke", "--fake_train_size", "60"),
            *("--batch_size", "10", "--epochs", str(search_epochs), "--val_fraction", "0.25"),
            *("--lut_path", str(lut), "--progress", "False", "--log_dir", str(work / "runs")),
        ],
    }


def launch(cmd: list[str], log_file: Path) -> subprocess.Popen:
    with open(log_file, "ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def reference(cmd: list[str], run_dir: Path, log_file: Path) -> tuple[dict, float, float]:
    """The unbroken run: its JSON line, and its CPU seconds when its first file appeared and at the end."""
    proc = launch(cmd + ["--run_name", run_dir.name], log_file)
    first = end = 0.0
    while proc.poll() is None:
        try:
            end = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            break
        if not first and (run_dir / "log.txt").exists():
            first = end
        time.sleep(0.005)
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"the reference run {run_dir} failed; see {log_file}")
    return last_json(proc), first, end


def last_json(proc: subprocess.Popen) -> dict:
    return json.loads(proc.stdout.read().decode().strip().splitlines()[-1])


def killed_then_resumed(
    cmd: list[str], run_dir: Path, at_cpu_s: float, log_file: Path, sig: int = signal.SIGKILL
) -> dict:
    """Start, send ``sig`` once it has used ``at_cpu_s`` CPU seconds, then resume until it exits 0."""
    stopped_log = log_file.with_name(f"{run_dir.name}.stderr")
    proc = launch(cmd + ["--run_name", run_dir.name], stopped_log)
    landed: dict[str, Any] = {
        "signal": signal.Signals(sig).name,
        "kill_at_cpu_s": round(at_cpu_s, 2),
        "killed": False,
    }
    while proc.poll() is None:
        try:
            used = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            break
        if used >= at_cpu_s:
            proc.send_signal(sig)
            landed["killed"] = True
            break
        time.sleep(0.002)
    proc.wait()  # not killed: it ended first, and the resume finds a finished run
    if sig in EXPECTED_STATUS:  # a signal the run catches: its status and its last words
        stderr = stopped_log.read_text(errors="replace")
        # a signal after the final JSON line came while Python shut down: nothing left to stop
        landed["after_the_end"] = bool(proc.stdout.read().strip())
        landed["exit_status"] = proc.returncode
        landed["traceback"] = "Traceback" in stderr
        landed["last_line"] = (stderr.strip().splitlines() or [""])[-1]
    last = run_dir / "last.pth"
    landed["epoch_at_kill"] = load_checkpoint(last)["epoch"] if last.exists() else None
    landed["temp_files_at_kill"] = len(list(run_dir.glob(".*.tmp")))
    for attempt in range(5):
        if last.exists():
            again = cmd[:2] + ["--resume", str(last)]
        else:  # killed before its first checkpoint: start it again
            again = cmd + ["--run_name", run_dir.name, "--overwrite"]
        proc = launch(again, log_file)
        proc.wait()
        if proc.returncode == 0:
            landed["resumes"] = attempt + 1
            landed["summary"] = last_json(proc)
            return landed
    raise SystemExit(f"{run_dir} did not finish after 5 resumes; see {log_file}")


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if not k.startswith("time/")} for r in csv.DictReader(f)
        ]


def differences(
    run_dir: Path, ref_dir: Path, summary: dict, ref_summary: dict, landed: dict
) -> list[str]:
    """What differs between a resumed run and the unbroken reference (empty: nothing)."""
    problems = []
    if "exit_status" in landed and landed["killed"] and not landed["after_the_end"]:
        expected = EXPECTED_STATUS[signal.Signals[landed["signal"]]]
        if landed["exit_status"] != expected:
            problems.append(f"exit status {landed['exit_status']}, not {expected}")
        # the line says how to go on: --resume, or start again when no checkpoint was written yet
        says_how = "--resume" in landed["last_line"] or "start the run again" in landed["last_line"]
        if landed["traceback"] or not says_how:
            problems.append(f"not one line: {landed['last_line']!r}")
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(run_dir / name), load_checkpoint(ref_dir / name)
        for key in ("epoch", "best_top1", "best_epoch", "last_metrics"):
            if a.get(key) != b.get(key):
                problems.append(f"{name}: {key} {a.get(key)} vs {b.get(key)}")
        if a["model"].keys() != b["model"].keys() or not all(
            torch.equal(a["model"][k], b["model"][k]) for k in a["model"]
        ):
            problems.append(f"{name}: weights differ")
        if str(a["optimizers"]) != str(b["optimizers"]):
            problems.append(f"{name}: optimizer state differs")
    if _rows(run_dir) != _rows(ref_dir):
        problems.append("metrics.csv differs")
    if (ref_dir / "thetas.json").exists():
        a, b = (json.loads((d / "thetas.json").read_text()) for d in (run_dir, ref_dir))
        if {**a, "run": None} != {**b, "run": None}:
            problems.append("thetas.json differs")
    drop = ("wall_s", "run_dir")
    if {k: v for k, v in summary.items() if k not in drop} != {
        k: v for k, v in ref_summary.items() if k not in drop
    }:
        problems.append("final JSON differs")
    left = sorted(p.name for p in run_dir.glob(".*.tmp"))
    if left:
        problems.append(f"temporary files left: {left}")
    return problems


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--train_runs", type=int, default=10, help="training runs to kill")
    parser.add_argument("--search_runs", type=int, default=10, help="searches to kill")
    parser.add_argument(
        "--signal_runs",
        type=int,
        default=5,
        help="runs per kind stopped by SIGINT, as many by SIGTERM",
    )
    parser.add_argument("--train_epochs", type=int, default=20, help="epochs of a training run")
    parser.add_argument("--search_epochs", type=int, default=10, help="epochs of a search")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work_dir", default="", help="folder for the runs (default: a temp one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kill_resume_"))
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "runs.log"
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(work / "kill_resume.log"), logging.StreamHandler()],
    )
    rng = random.Random(args.seed)
    result: dict[str, Any] = {}
    try:
        for kind, cmd in commands(work, args.train_epochs, args.search_epochs).items():
            n = args.train_runs if kind == "train" else args.search_runs
            sigs = [signal.SIGKILL] * n + [signal.SIGINT, signal.SIGTERM] * args.signal_runs
            if not sigs:
                continue
            ref_dir = work / "runs" / f"{kind}_unbroken"
            ref_summary, first_s, end_s = reference(cmd, ref_dir, log_file)
            log.info(
                "%s: unbroken run, first file at %.2f CPU s, done at %.2f CPU s",
                kind,
                first_s,
                end_s,
            )
            runs = []
            for i, sig in enumerate(tqdm(sigs, desc=f"stop {kind}")):
                run_dir = work / "runs" / f"{kind}_{i}"
                at = rng.uniform(first_s, end_s)
                landed = killed_then_resumed(cmd, run_dir, at, log_file, sig)
                landed["problems"] = differences(
                    run_dir, ref_dir, landed.pop("summary"), ref_summary, landed
                )
                log.info("%s %d: %s", kind, i, landed)
                runs.append(landed)
            result[kind] = {
                "runs": len(runs),
                "matched": sum(not r["problems"] for r in runs),
                "killed": {
                    name: sum(r["killed"] for r in runs if r["signal"] == name)
                    for name in dict.fromkeys(r["signal"] for r in runs)
                },
                "killed_before_first_checkpoint": sum(r["epoch_at_kill"] is None for r in runs),
                "left_temp_files_at_kill": sum(r["temp_files_at_kill"] > 0 for r in runs),
                "details": runs,
            }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["settings"] = {k: getattr(args, k) for k in ("train_epochs", "search_epochs", "seed")}
    result["all_matched"] = all(
        v["matched"] == v["runs"] for k, v in result.items() if k != "settings"
    )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["all_matched"] else 1)
