"""Nothing lost, nothing run from data: killed runs, reused run folders, resumed recipes, bad files.

Runs use the 4-layer ``tiny`` space on a few synthetic images with one thread, so each takes seconds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from general_functions.dataloaders import DataError, load_cifar10

REPO = Path(__file__).resolve().parent.parent
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# ----------------------------------------------------------------------------------- CIFAR-10 files
class _RunsACommand:
    """Unpickling this calls ``os.system``: what a hostile data file would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cifar_folder(root: Path, protocol: int = 2, payload=None) -> Path:
    """A CIFAR-10 layout of two images per batch; ``payload`` goes into data_batch_1."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(CIFAR_FILES):
        data = np.full((2, 3072), i, np.uint8)
        batch = {"batch_label": name, "labels": [i, 9 - i], "data": data, "filenames": ["a", "b"]}
        if payload is not None and name == "data_batch_1":
            batch["batch_label"] = payload
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_arrays_and_lists_load(tmp_path, protocol):
    _cifar_folder(tmp_path, protocol)
    data = load_cifar10(tmp_path)
    assert data.train.images.shape == (10, 3, 32, 32) and data.test.images.shape == (2, 3, 32, 32)
    assert data.train.labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    assert int(data.test.images[0].float().mean()) == 5


def test_a_cifar_batch_that_names_a_function_runs_nothing(tmp_path):
    marker = tmp_path / "it_ran"
    folder = _cifar_folder(tmp_path / "data", payload=_RunsACommand(marker))
    with pytest.raises(DataError, match=f"{folder / 'data_batch_1'}.*system") as err:
        load_cifar10(tmp_path / "data")
    assert "\n" not in str(err.value)
    assert not marker.exists()
    message = _refused(
        _train,
        [
            *("--dataset", "cifar10", "--data_dir", str(tmp_path / "data")),
            *("--log_dir", str(tmp_path / "runs"), "--progress", "False"),
        ],
    )
    assert message.startswith("error: CIFAR-10 file ") and "data_batch_1" in message
    assert not marker.exists()


def test_the_exact_pixel_accuracy_is_reported_only_with_its_mask_and_names_it(tmp_path):
    """The mask of exact test images is an optional file of the data folder, named when used."""
    _cifar_folder(tmp_path / "data")
    assert load_cifar10(tmp_path / "data").test_exact is None  # no mask: no exact-pixel line
    mask = tmp_path / "data" / "test_pixel_exact_mask.npy"
    np.save(mask, np.array([1, 0], np.uint8))
    argv = ["--dataset", "cifar10", "--data_dir", str(tmp_path / "data"), "--epochs", "1"]
    summary = _train(_train_args(tmp_path, *argv, "--batch_size", "2", name="masked"))
    log = (tmp_path / "runs" / "masked" / "log.txt").read_text()
    assert f"{mask} marks 1 test images as exact-pixel: every epoch also reports" in log
    assert "| exact-pixel top1 " in log and "final_exact1000_top1" in summary


# ----------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _train_args(tmp_path: Path, *extra: str, name: str = "r") -> list[str]:
    """architecture_main_file.py flags of a 4-layer network on 128 synthetic images."""
    arch = tmp_path / "tiny_a.json"
    ops = ["ir_k3_e3", "ir_k5_e1", "skip", "ir_k3_s2"]
    arch.write_text(json.dumps({"name": "tiny_a", "ops": ops, "search_space": "tiny"}))
    return [
        *("--architecture_name", str(arch), "--dataset", "fake", "--fake_train_size", "128"),
        *("--fake_test_size", "64", "--batch_size", "32", "--epochs", "3", "--threads", "1"),
        *("--progress", "False", "--log_dir", str(tmp_path / "runs"), "--run_name", name),
        *extra,
    ]


def _search_args(tmp_path: Path, *extra: str, name: str = "s") -> list[str]:
    """supernet_main_file.py flags of a search of the 4-layer space on 40 images: warm-up + 1 epoch."""
    from fbnet_building_blocks.search_space import CANDIDATE_OPS
    from supernet_functions.latency.table import LatencyLookupTable

    lut = tmp_path / "tiny_lut.json"
    rows = [{op: 0.2 + 0.1 * i + 0.03 * j for j, op in enumerate(CANDIDATE_OPS)} for i in range(4)]
    LatencyLookupTable.from_latencies("tiny", rows, fixed_ms={"stem": 0.1, "head": 0.2}).save(lut)
    return [
        *("--train_or_sample", "train", "--preset", "smoke", "--fake_train_size", "40"),
        *("--batch_size", "10", "--epochs", "2", "--val_fraction", "0.25", "--lut_path", str(lut)),
        *("--log_dir", str(tmp_path / "runs"), "--run_name", name, "--progress", "False"),
        *extra,
    ]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, dict]:
    """An unbroken search (run "full") to compare interrupted ones with; their runs go beside it."""
    folder = tmp_path_factory.mktemp("search")
    return folder, _search(_search_args(folder, name="full"))


def _train(argv: list[str]) -> dict:
    import architecture_main_file

    return architecture_main_file.main(argv)


def _search(argv: list[str]) -> dict:
    import supernet_main_file

    return supernet_main_file.main(argv)


def _refused(main, argv: list[str]) -> str:
    """The one-line message with which ``main(argv)`` exits."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def _untimed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "wall_s"}


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if not k.startswith("time/")} for r in csv.DictReader(f)
        ]


def _same_checkpoint(a: Path, b: Path) -> None:
    """Two checkpoints hold the same epoch, weights, optimizer state and record of the best."""
    from general_functions.checkpoint import load_checkpoint

    sa, sb = load_checkpoint(a), load_checkpoint(b)
    for key in ("epoch", "best_top1", "best_epoch", "last_metrics"):
        assert sa.get(key) == sb.get(key), key
    assert sa["model"].keys() == sb["model"].keys()
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert str(sa["optimizers"]) == str(sb["optimizers"])


def _improvements(rows: list[dict[str, str]], column: str) -> int:
    """How many epochs set a new best of ``column`` (the number of best.pth writes)."""
    best, count = -1.0, 0
    for row in rows:
        if float(row[column]) > best:
            best, count = float(row[column]), count + 1
    return count


def _tb_scalars(run_dir: Path) -> int:
    """How many scalar values the run's TensorBoard event files hold."""
    import struct

    from tensorboardX.proto import event_pb2

    count = 0
    for path in (run_dir / "tb").glob("events.out.tfevents.*"):
        blob, pos = path.read_bytes(), 0
        while pos < len(blob):  # TFRecord: [len u64][crc u32][data][crc u32]
            (length,) = struct.unpack_from("<Q", blob, pos)
            event = event_pb2.Event.FromString(blob[pos + 12 : pos + 12 + length])
            count += sum(v.WhichOneof("value") == "simple_value" for v in event.summary.value)
            pos += 12 + length + 4
    return count


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no ``except Exception`` catches it."""


def _kill_at_best_write(monkeypatch, nth: int) -> None:
    """The ``nth`` write of a best.pth dies half-way, leaving its temporary file behind."""
    import general_functions.checkpoint as checkpoint

    seen = []
    real = checkpoint.atomic_write

    def write(path, fn, mode="wb"):
        if Path(path).name == "best.pth":
            seen.append(path)
            if len(seen) == nth:
                (Path(path).parent / ".best.pth.k1ll3d_x.tmp").write_bytes(b"half a checkpoint")
                raise _Killed
        return real(path, fn, mode)

    monkeypatch.setattr(checkpoint, "atomic_write", write)


# ----------------------------------------------------------------------------------- best.pth, kills
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """An unbroken training run (run "full") to compare interrupted ones with."""
    folder = tmp_path_factory.mktemp("train")
    return folder, _train(_train_args(folder, name="full"))


# main, its flags, the unbroken run's fixture and the column that picks best.pth
KINDS = {
    "train": (_train, _train_args, "trained", "test/top1"),
    "search": (_search, _search_args, "searched", "held_out/top1"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_kill_while_best_pth_is_written_is_repaired_on_resume(kind, request, monkeypatch):
    """last.pth (written first) is the best epoch's; resuming puts it in best.pth."""
    main, args, reference, column = KINDS[kind]
    folder, full = request.getfixturevalue(reference)
    full_dir, run_dir = folder / "runs" / "full", folder / "runs" / "k"
    _kill_at_best_write(monkeypatch, _improvements(_rows(full_dir), column))
    with pytest.raises(_Killed):
        main(args(folder, name="k"))
    monkeypatch.undo()
    assert [p.name for p in run_dir.glob(".*.tmp")] == [".best.pth.k1ll3d_x.tmp"]
    resumed = main(args(folder, "--resume", str(run_dir / "last.pth"), name="k"))
    assert _untimed(resumed) == {**_untimed(full), "run_dir": str(run_dir)}
    for name in ("last.pth", "best.pth"):
        _same_checkpoint(run_dir / name, full_dir / name)
    assert _rows(run_dir) == _rows(full_dir)
    assert not list(run_dir.glob(".*.tmp"))


# ----------------------------------------------------------------------------------- run folders
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_new_run_in_a_folder_that_holds_one_is_refused(tmp_path, kind):
    main, args = KINDS[kind][:2]
    main(args(tmp_path, "--epochs", "1", name="x"))
    run_dir = tmp_path / "runs" / "x"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    message = _refused(main, args(tmp_path, "--epochs", "1", "--seed", "1", name="x"))
    assert f"run folder {run_dir} already holds a run" in message
    assert f"--resume {run_dir / 'last.pth'}" in message and "--overwrite" in message
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    scalars = _tb_scalars(run_dir)
    (run_dir / ".last.pth.x1y2z3_4.tmp").write_bytes(b"left by a kill")
    main(args(tmp_path, "--epochs", "1", "--seed", "1", "--overwrite", name="x"))
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 1
    assert len(_rows(run_dir)) == 1 and _tb_scalars(run_dir) == scalars > 0
    assert (run_dir / "log.txt").read_text().count("run folder") == 1  # a fresh log
    assert not list(run_dir.glob(".*.tmp"))


# ----------------------------------------------------------------------------------- resume recipe
def test_a_plain_resume_restores_the_recipe_and_refuses_contradictions(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # a resume on the defaults would look for CIFAR-10 here
    recipe = ("--label_smoothing", "0.1", "--lr", "0.05", "--lr_schedule", "cosine")
    full = _train(_train_args(tmp_path, *recipe, name="full"))
    _train(_train_args(tmp_path, *recipe, "--stop_after_epoch", "1", name="part"))
    part = tmp_path / "runs" / "part"
    last = str(part / "last.pth")
    message = _refused(_train, ["--resume", last, "--lr", "0.5", "--batch_size", "64"])
    assert "--batch_size 64 contradicts the checkpoint's 32" in message
    assert "--lr 0.5 contradicts the checkpoint's 0.05" in message
    message = _refused(_train, ["--resume", last, "--epochs", "2"])
    assert "--epochs 2 contradicts the checkpoint's 3 (it may only be raised)" in message
    torch.set_num_threads(2)
    resumed = _train(["--resume", last])
    assert torch.get_num_threads() == 1  # the run's --threads 1, so the sums come out the same
    assert _untimed(resumed) == {**_untimed(full), "run_dir": str(part)}
    assert _rows(part) == _rows(tmp_path / "runs" / "full")
    saved = json.loads((part / "config.json").read_text())
    assert (saved["dataset"], saved["batch_size"], saved["label_smoothing"]) == ("fake", 32, 0.1)
    assert not (tmp_path / "cifar10_data").exists()
    capsys.readouterr()  # resumed again, the finished run prints its summary and succeeds
    again = _train(["--resume", last])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == again
    assert _untimed(again) == _untimed(resumed)
    # more epochs: the cosine schedule decays from where it is to the new end
    _train(_train_args(tmp_path, *recipe, "--stop_after_epoch", "1", name="more"))
    longer = _train(["--resume", str(tmp_path / "runs" / "more" / "last.pth"), "--epochs", "5"])
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "runs" / "more")]
    assert longer["epochs"] == 5 and lrs[:2] == pytest.approx([0.05, 0.0375])
    ratio = (1 + math.cos(math.pi * 4 / 5)) / (1 + math.cos(math.pi / 5))
    assert lrs[4] == pytest.approx(0.0375 * ratio) and lrs == sorted(lrs, reverse=True)


def test_eval_only_needs_nothing_but_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = _train(_train_args(tmp_path))
    (tmp_path / "tiny_a.json").unlink()  # the architecture comes from the checkpoint
    best = str(tmp_path / "runs" / "r" / "best.pth")
    evaluated = _train(["--eval_only", "--checkpoint", best])
    assert evaluated["architecture"] == "tiny_a" and evaluated["eval_only"] is True
    assert evaluated["final_top1"] == summary["best_top1"]
    message = _refused(
        _train, ["--eval_only", "--checkpoint", best, "--architecture_name", "fbnet_a"]
    )
    assert "holds architecture 'tiny_a'" in message


def test_a_plain_search_resume_restores_the_recipe(searched, monkeypatch, capsys):
    folder, full = searched
    monkeypatch.chdir(folder)  # a resume on the defaults would look for CIFAR-10 here
    _search(_search_args(folder, "--stop_after_epoch", "1", name="part"))
    part = folder / "runs" / "part"
    last = str(part / "last.pth")
    message = _refused(_search, ["--resume", last, "--w_lr", "0.05", "--batch_size", "8"])
    assert "--batch_size 8 contradicts the checkpoint's 10" in message
    assert "--w_lr 0.05 contradicts the checkpoint's 0.1" in message
    message = _refused(_search, ["--resume", last, "--run_name", "elsewhere"])
    assert "--run_name elsewhere names another folder than part" in message
    torch.set_num_threads(2)
    resumed = _search(["--resume", last])
    assert torch.get_num_threads() == 1  # the smoke preset's --threads 1
    assert _untimed(resumed) == {**_untimed(full), "run_dir": str(part)}  # the search logs wall_s
    assert _rows(part) == _rows(folder / "runs" / "full")
    thetas = [
        json.loads((d / "thetas.json").read_text())["thetas"] for d in (part, part.parent / "full")
    ]
    assert thetas[0] == thetas[1]
    assert not (folder / "cifar10_data").exists()
    capsys.readouterr()  # resumed again, the finished run prints its summary and succeeds
    assert _search(["--resume", last]) == resumed
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == resumed


def test_checkpoints_with_the_old_flag_names_resume_and_evaluate(tmp_path, capsys):
    """Configurations saved before --run_dir, --stop_epoch and --steps_per_epoch were renamed."""
    from general_functions.checkpoint import load_checkpoint, save_checkpoint

    renames = {"log_dir": "run_dir", "stop_after_epoch": "stop_epoch"}
    renames["max_steps_per_epoch"] = "steps_per_epoch"
    _train(_train_args(tmp_path, "--stop_after_epoch", "1"))
    _search(_search_args(tmp_path, "--stop_after_epoch", "1"))
    renamed = {"r/last.pth": ["log_dir"], "r/best.pth": ["log_dir"]}
    renamed["s/last.pth"] = ["stop_after_epoch", "max_steps_per_epoch"]
    for name, keys in renamed.items():
        path = tmp_path / "runs" / name
        state = load_checkpoint(path)
        for key in keys:
            state["config"][renames[key]] = state["config"].pop(key)
        save_checkpoint(path, {k: v for k, v in state.items() if k != "format_version"})
    capsys.readouterr()
    evaluated = _train(["--eval_only", "--checkpoint", str(tmp_path / "runs" / "r" / "best.pth")])
    assert evaluated["eval_only"] is True and evaluated["epochs"] == 1
    assert _train(["--resume", str(tmp_path / "runs" / "r" / "last.pth")])["epochs"] == 3
    assert _search(["--resume", str(tmp_path / "runs" / "s" / "last.pth")])["epoch"] == 2
    assert "deprecated" not in capsys.readouterr().err  # old checkpoints load silently


# ----------------------------------------------------------------------------------- torchrun
def test_the_process_group_waits_dist_timeout_min(tmp_path, monkeypatch):
    import datetime

    import torch.distributed as dist

    from architecture_functions.config_for_arch import ArchTrainConfig
    from supernet_functions.config_for_supernet import SupernetConfig

    assert ArchTrainConfig().dist_timeout_min <= 10 and SupernetConfig().dist_timeout_min <= 10
    seen = []

    class Joined(Exception):
        pass

    def init_process_group(backend, timeout, rank, world_size):
        seen.append(timeout)
        raise Joined

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(Joined):
        _train(_train_args(tmp_path, "--dist_timeout_min", "0.5", "--device", "cpu"))
    with pytest.raises(Joined):
        _search(_search_args(tmp_path, "--dist_timeout_min", "2", "--device", "cpu"))
    assert seen == [datetime.timedelta(seconds=30), datetime.timedelta(minutes=2)]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_torchrun_worker_ends_when_its_parent_dies(tmp_path):
    """torchrun starts workers in sessions of their own; killed, it must not leave them running."""
    worker = (
        f"import sys, time; sys.path.insert(0, {str(REPO)!r}); "
        "from general_functions.distributed import init_distributed; "
        "init_distributed('cpu'); print('ready', flush=True); time.sleep(120)"
    )
    parent = (
        "import os, subprocess, sys, time\n"
        "env = dict(os.environ, TORCHELASTIC_RUN_ID='t', RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')\n"
        f"child = subprocess.Popen([sys.executable, '-c', {worker!r}], env=env,\n"
        "    stdout=subprocess.PIPE, start_new_session=True)\n"
        "child.stdout.readline()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        assert _alive(child)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the worker outlived its parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _torchrun(tmp_path: Path, *extra: str) -> subprocess.Popen:
    """torchrun with two CPU workers training for a long time, in a process group of its own."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = _train_args(tmp_path, "--epochs", "1000", "--device", "cpu", *extra)
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        + ["--master_port", str(port), "architecture_main_file.py", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for_training(proc: subprocess.Popen, tmp_path: Path) -> list[int]:
    """The worker pids, once the run has written its first checkpoint."""
    deadline = time.monotonic() + 600
    while not (tmp_path / "runs" / "r" / "last.pth").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "torchrun did not start"
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert len(workers) == 2
    return workers


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_torchrun_ends_its_workers(tmp_path):
    proc = _torchrun(tmp_path)
    workers = _wait_for_training(proc, tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's group: not the workers' sessions
        proc.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers)), "a worker outlived torchrun"
    finally:
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stopped_worker_fails_the_job_after_dist_timeout_min(tmp_path):
    proc = _torchrun(tmp_path, "--dist_timeout_min", "0.1")
    workers = _wait_for_training(proc, tmp_path)
    try:
        os.kill(workers[1], signal.SIGSTOP)
        stopped = time.monotonic()
        assert proc.wait(timeout=180) != 0  # rank 0 gives up after 6 s; torchrun ends the job
        assert time.monotonic() - stopped < 120
    finally:
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
