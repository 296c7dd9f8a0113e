"""Hostile inputs and run-folder races: each is refused with one line, and no run is corrupted.

Each test parses a file or claims a folder, without training, so the whole file takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fbnet_building_blocks.arch_specs import load_arch
from general_functions import run_folder
from general_functions.run_folder import RunLockedError, release_run_locks, start_run_dir

TINY_OPS = ["ir_k3_e3", "ir_k5_e1", "skip", "ir_k3_s2"]


@pytest.fixture(autouse=True)
def _no_locks_left():
    yield
    release_run_locks()


def _arch_file(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "arch.json"
    path.write_text(
        json.dumps({"name": "tiny_a", "ops": TINY_OPS, "search_space": "tiny", **fields})
    )
    return path


def _refused(argv: list[str]) -> str:
    import architecture_main_file

    with pytest.raises(SystemExit) as exit_:
        architecture_main_file.main(argv)
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def _train_argv(tmp_path: Path, arch: Path, *extra: str) -> list[str]:
    return [
        *("--architecture_name", str(arch), "--dataset", "fake", "--fake_train_size", "32"),
        *("--fake_test_size", "32", "--batch_size", "32", "--epochs", "1", "--threads", "1"),
        *("--progress", "False", "--log_dir", str(tmp_path / "runs"), *extra),
    ]


# ----------------------------------------------------------------------------------- item 1: names
@pytest.mark.parametrize("name", ["/some/abs/path", "../../../escaped", "..", "a/b", "a\\b"])
def test_an_architecture_name_that_leaves_the_run_root_is_refused(tmp_path, name):
    arch = _arch_file(tmp_path, name=name)
    message = _refused(_train_argv(tmp_path, arch))
    assert f"architecture file {arch}: field 'name' must be a name" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.json"]  # no folder made anywhere


def test_a_run_name_prefix_is_checked_where_it_enters(tmp_path):
    with pytest.raises(ValueError, match="prefix"):
        start_run_dir(tmp_path / "runs", "", prefix="../../escaped")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------- item 2: locks
def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    class Frozen:  # every run starts at the same moment
        @staticmethod
        def now():
            from datetime import datetime as real

            return real(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(run_folder, "datetime", Frozen)
    dirs = [start_run_dir(tmp_path, "", prefix="net") for _ in range(3)]
    assert [d.name for d in dirs] == [
        "net_20260102_030405",
        *(f"net_20260102_030405_{i}" for i in (2, 3)),
    ]


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock and keeps it until its stdin closes."""
    code = (
        "import sys; from general_functions.run_folder import lock_run_dir; "
        f"lock_run_dir({str(folder)!r}); print('held', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_the_same_run_name_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "runs" / "same"
    folder.mkdir(parents=True)
    holder = _hold_lock(folder)
    try:
        arch = _arch_file(tmp_path)
        message = _refused(_train_argv(tmp_path, arch, "--run_name", "same"))
        assert f"run folder {folder} is in use by process {holder.pid}" in message
        assert sorted(p.name for p in folder.iterdir()) == [".run.lock"]  # nothing written
        with pytest.raises(RunLockedError, match=str(holder.pid)):  # a resume waits its turn too
            run_folder.lock_run_dir(folder)
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (folder / ".run.lock").exists()  # released when the holder ended


def test_the_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    lock = tmp_path / ".run.lock"
    lock.write_text(dead.stdout.decode())
    run_folder.lock_run_dir(tmp_path)
    assert lock.read_text().strip() == str(os.getpid())
    assert "no longer running" in caplog.text
    release_run_locks()
    assert not lock.exists()


def test_a_refused_start_leaves_no_lock(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(run_folder.RunExistsError):
        start_run_dir(tmp_path, "x", prefix="net")
    assert not (folder / ".run.lock").exists()


def test_a_failed_start_removes_only_the_run_folder_it_made(tmp_path):
    """No data: both trainers stop before their first file. The folders they made go (with the
    parent made for them); a folder the user made, or one holding more than the log, stays."""
    import torch

    import architecture_main_file
    import supernet_main_file

    mine = tmp_path / "runs" / "user_made"
    mine.mkdir(parents=True)
    common = ["--data_dir", str(tmp_path / "none"), "--threads", "1", "--progress", "False"]
    starts = [
        (architecture_main_file.main, [*common, "--architecture_name", "fbnet_a"]),
        (supernet_main_file.main, common),
    ]
    folders = [["--log_dir", str(tmp_path / "runs" / "made")], ["--log_dir", str(mine.parent)]]
    folders[1] += ["--run_name", mine.name]
    threads = torch.get_num_threads()
    try:
        for main, argv in starts:
            for where in folders:
                with pytest.raises(SystemExit, match="error: no CIFAR-10 at "):
                    main([*argv, *where])
    finally:
        torch.set_num_threads(threads)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["user_made"]
    assert [p.name for p in mine.iterdir()] == ["log.txt"]  # the search's first line
    run_dir = start_run_dir(tmp_path / "runs", "", prefix="net")
    (run_dir / "notes.txt").write_text("not the run's")
    assert not run_folder.remove_unstarted_run(run_dir) and run_dir.is_dir()


# ----------------------------------------------------------------------------------- item 3: files
@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("head_channels", -3, "null or an integer in [1, 65536]"),
        ("head_channels", 10**12, "null or an integer in [1, 65536]"),
        ("width_mult", -1, "a number in (0, 10]"),
        ("width_mult", 0, "a number in (0, 10]"),
        ("width_mult", 1e6, "a number in (0, 10]"),
        ("width_mult", "abc", "a number in (0, 10]"),
        ("input_size", -5, "null or an integer in [8, 4096]"),
        ("name", None, "a name of letters"),
        ("ops", "skip", "a list of 1 to 1000 op names"),
        ("source", [], "an object"),
    ],
)
def test_every_field_of_an_architecture_file_is_checked(tmp_path, field, value, allowed):
    arch = _arch_file(tmp_path, **{field: value})
    with pytest.raises(ValueError) as err:
        load_arch(str(arch))
    assert str(err.value).startswith(f"architecture file {arch}: field {field!r} must be {allowed}")
    assert "\n" not in str(err.value)


def _deep(path: Path) -> Path:
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def _big(path: Path) -> Path:
    path.write_text('{"name": "' + "a" * 1_000_001 + '"}')
    return path


def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 4)
    return path


@pytest.mark.parametrize(
    "make, says", [(_deep, "nested too deeply"), (_big, "bytes; at most 1000000")]
)
def test_an_oversized_or_deep_architecture_file_gives_one_line(tmp_path, make, says):
    arch = make(tmp_path / "arch.json")
    message = _refused(_train_argv(tmp_path, arch))
    assert message.startswith(f"error: architecture file {arch}") and says in message


@pytest.mark.parametrize(
    "make, says",
    [
        (_deep, "nested too deeply"),
        (_big, "bytes; at most 1000000"),
        (_binary, "is not a text file"),
        (lambda p: p.mkdir() or p, "is not a file"),
    ],
)
def test_a_bad_config_file_gives_one_line(tmp_path, make, says, capsys):
    import architecture_main_file
    import supernet_main_file

    config = make(tmp_path / "config.json")
    for main in (architecture_main_file.main, supernet_main_file.main):
        with pytest.raises(SystemExit) as exit_:
            main(["--config", str(config)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: config file {config} ") and says in err
        assert err.count("\n") == 1


@pytest.mark.parametrize("make, says", [(_deep, "nested too deeply"), (_big, "at most 1000000")])
def test_an_oversized_or_deep_table_or_thetas_file_gives_one_line(tmp_path, make, says):
    from supernet_functions.latency.table import LatencyLookupTable
    from supernet_functions.sampling import read_thetas

    table = make(tmp_path / "lut.json")
    with pytest.raises(ValueError) as err:
        LatencyLookupTable.load(table)
    assert str(err.value).startswith(f"lookup table {table}") and says in str(err.value)
    make(tmp_path / "thetas.json")
    with pytest.raises(ValueError) as err:
        read_thetas(tmp_path)
    assert str(err.value).startswith(f"thetas file {tmp_path / 'thetas.json'}")
    assert says in str(err.value)


# ----------------------------------------------------------------------------------- item 4: values
def _search_argv(tmp_path: Path, *extra: str) -> list[str]:
    """A search of the 4-layer space on 20 synthetic images with a made-up table: 1 step per phase."""
    from fbnet_building_blocks.search_space import CANDIDATE_OPS
    from supernet_functions.latency.table import LatencyLookupTable

    lut = tmp_path / "tiny_lut.json"
    rows = [{op: 0.2 + 0.1 * i + 0.03 * j for j, op in enumerate(CANDIDATE_OPS)} for i in range(4)]
    LatencyLookupTable.from_latencies("tiny", rows, fixed_ms={"stem": 0.1, "head": 0.2}).save(lut)
    return [
        *("--train_or_sample", "train", "--preset", "smoke", "--fake_train_size", "20"),
        *("--batch_size", "10", "--epochs", "2", "--warmup_epochs", "0", "--lut_path", str(lut)),
        *("--log_dir", str(tmp_path / "runs"), "--run_name", "s", "--progress", "False"),
        *extra,
    ]


def _search_refused(argv: list[str]) -> str:
    import supernet_main_file

    with pytest.raises(SystemExit) as exit_:
        supernet_main_file.main(argv)
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("label", [10, -1, 2**40, -100])
def test_a_cifar_label_outside_0_to_9_is_refused_at_load(tmp_path, label):
    import pickle

    import numpy as np

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [3, label] if name == "data_batch_4" else [3, 4]
        batch = {"labels": labels, "data": np.zeros((2, 3072), np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch))
    argv = _train_argv(tmp_path, _arch_file(tmp_path), "--dataset", "cifar10", "--data_dir")
    message = _refused([*argv, str(tmp_path / "data")])
    assert message == (
        f"error: CIFAR-10 file {folder / 'data_batch_4'}: label {label} (image 1) is outside 0-9 "
        "(1 such labels)"
    )


@pytest.mark.parametrize("threads", ["5000", "100000"])
def test_more_threads_than_cores_is_refused(tmp_path, threads):
    message = _refused(_train_argv(tmp_path, _arch_file(tmp_path), "--threads", threads))
    assert message.startswith(f"error: --threads {threads} is more than this machine's")
    message = _search_refused(_search_argv(tmp_path, "--threads", threads))
    assert message.startswith(f"error: --threads {threads} is more than this machine's")


@pytest.mark.parametrize("flag", ["--lr", "--weight_decay"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_learning_rate_of_inf_is_refused_as_not_finite(tmp_path, capsys, flag, value):
    import architecture_main_file

    with pytest.raises(SystemExit):
        architecture_main_file.main(_train_argv(tmp_path, _arch_file(tmp_path), flag, value))
    assert capsys.readouterr().err == f"error: {flag} must be a finite number, got {value}\n"


def _nan_after_first_checkpoint(monkeypatch, cls, run_dir: Path) -> None:
    """``cls.forward`` returns NaN (its first output, when a tuple) once the run has a last.pth."""
    import torch

    real = cls.forward

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if not (run_dir / "last.pth").exists():
            return out
        if isinstance(out, tuple):
            return (out[0] * torch.nan, *out[1:])
        return out * torch.nan

    monkeypatch.setattr(cls, "forward", forward)


def test_a_nan_loss_stops_the_run_with_one_line_naming_where_and_how_to_resume(
    tmp_path, monkeypatch
):
    from torch import nn

    from general_functions.checkpoint import load_checkpoint
    from supernet_functions.loss import SupernetLoss

    run_dir = tmp_path / "runs" / "r"
    _nan_after_first_checkpoint(monkeypatch, nn.CrossEntropyLoss, run_dir)
    argv = _train_argv(tmp_path, _arch_file(tmp_path), "--epochs", "2", "--run_name", "r")
    message = _refused(argv)
    assert message == (
        f"error: stopped: epoch 2, step 0: the loss is nan; continue with --resume {run_dir}/last.pth"
    )
    assert (
        load_checkpoint(run_dir / "last.pth")["epoch"] == 1 and not (run_dir / ".run.lock").exists()
    )
    run_dir = tmp_path / "runs" / "s"
    _nan_after_first_checkpoint(monkeypatch, SupernetLoss, run_dir)
    message = _search_refused(_search_argv(tmp_path))
    assert message == (
        "error: stopped at epoch 2: weights: the loss is nan at step 0; "
        f"continue with --resume {run_dir}/last.pth"
    )
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1  # epochs done: the first


# ----------------------------------------------------------------------------------- item 5: signals
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("kind, sig", [("train", "SIGINT"), ("search", "SIGTERM")])
def test_a_signal_after_the_first_checkpoint_stops_a_run_in_one_line(
    tmp_path, monkeypatch, capsys, kind, sig
):
    """The signal arrives (in this process) as the first last.pth is written: the run stops before
    its next step, prints one line saying how to continue and exits with the shell's status."""
    import signal

    import architecture_main_file
    import supernet_main_file
    from general_functions import checkpoint

    signum = getattr(signal, sig)
    save = checkpoint.save_checkpoint

    def save_then_signal(path, state):
        save(path, state)
        if Path(path).name == "last.pth":
            os.kill(os.getpid(), signum)

    module = (
        "architecture_functions.training_functions"
        if kind == "train"
        else ("supernet_functions.training_functions_supernet")
    )
    monkeypatch.setattr(f"{module}.save_checkpoint", save_then_signal)
    many = ("--epochs", "100000", "--run_name", kind)
    if kind == "train":
        main, argv = architecture_main_file.main, _train_argv(tmp_path, _arch_file(tmp_path), *many)
    else:
        main, argv = supernet_main_file.main, _search_argv(tmp_path, *many)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    run_dir = tmp_path / "runs" / kind
    assert exit_.value.code == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted at epoch 2 step 0 (")  # before the next step
    assert err[-1].endswith(f"; continue with --resume {run_dir / 'last.pth'}")
    assert "Traceback" not in "\n".join(err)
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / ".run.lock").exists()
    assert checkpoint.load_checkpoint(run_dir / "last.pth")["epoch"] == 1


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_signal_mid_run_stops_both_trainers_with_one_line_and_no_partial_file(tmp_path):
    """SIGINT to a training run and SIGTERM to a search, once each has its first checkpoint, each a
    new process (the test above sends them in this process)."""
    import signal
    import time

    from general_functions.checkpoint import load_checkpoint

    arch = _arch_file(tmp_path)
    many = ("--epochs", "100000")  # the last --epochs given counts: it runs until stopped
    runs = {
        "r": ("architecture_main_file.py", _train_argv(tmp_path, arch, "--run_name", "r", *many)),
        "s": ("supernet_main_file.py", _search_argv(tmp_path, *many)),
    }
    sent = {"r": signal.SIGINT, "s": signal.SIGTERM}
    procs = {
        name: subprocess.Popen(
            [sys.executable, script, *argv],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (script, argv) in runs.items()
    }
    try:
        for name, proc in procs.items():
            deadline = time.monotonic() + 120
            while not (tmp_path / "runs" / name / "last.pth").exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.05)
            proc.send_signal(sent[name])
        for name, proc in procs.items():
            run_dir = tmp_path / "runs" / name
            err = proc.communicate(timeout=60)[1].strip().splitlines()
            assert proc.returncode == 128 + sent[name], err
            assert err[-1].startswith("interrupted at epoch ")
            assert err[-1].endswith(f"; continue with --resume {run_dir / 'last.pth'}")
            assert "Traceback" not in "\n".join(err)
            assert not list(run_dir.glob(".*.tmp")) and not (run_dir / ".run.lock").exists()
            load_checkpoint(run_dir / "last.pth")  # whole
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ----------------------------------------------------------------------------------- item 6: checksum
def _small_checkpoint(path: Path, epoch: int) -> None:
    import torch

    from general_functions.checkpoint import save_checkpoint

    net = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(2, 64)).sum().backward()
    optimizer.step()
    state = {"stage": "architecture", "epoch": epoch, "model": net.state_dict()}
    save_checkpoint(path, {**state, "optimizers": {"w": optimizer.state_dict()}})


def test_flipped_bytes_in_a_checkpoint_are_refused_naming_the_file(tmp_path):
    from general_functions.checkpoint import CheckpointError, checksum_path, load_checkpoint

    path = tmp_path / "last.pth"
    _small_checkpoint(path, 1)
    _small_checkpoint(path, 2)  # the sidecar lists only the last write
    assert checksum_path(path).read_text().count("\n") == 1
    assert load_checkpoint(path)["epoch"] == 2
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"checkpoint {path} is corrupt: its sha256 is not the one")
    message = _refused(["--resume", str(path)])
    assert message.startswith(f"error: checkpoint {path} is corrupt")
    checksum_path(path).unlink()  # without a sidecar (older code) a checkpoint loads unchecked
    load_checkpoint(path)


def test_a_kill_between_a_checkpoint_and_its_checksum_leaves_a_loadable_pair(tmp_path, monkeypatch):
    import general_functions.checkpoint as checkpoint

    path = tmp_path / "last.pth"
    _small_checkpoint(path, 1)

    class Killed(BaseException):
        pass

    writes = []
    real = checkpoint.atomic_write_text

    def write_text(target, text):
        writes.append(text)
        if len(writes) == 2:  # the sidecar's second write: after the checkpoint was replaced
            raise Killed
        real(target, text)

    monkeypatch.setattr(checkpoint, "atomic_write_text", write_text)
    with pytest.raises(Killed):
        _small_checkpoint(path, 2)
    assert checkpoint.checksum_path(path).read_text().count("\n") == 2  # new and old digests
    assert checkpoint.load_checkpoint(path)["epoch"] == 2


# ----------------------------------------------------------------------------------- item 7: disk full
def _disk_full_for(monkeypatch, name: str, once_exists: Path) -> None:
    """Writing ``name`` fails with ENOSPC (at its fsync) once ``once_exists`` exists."""
    import errno

    real = os.fsync

    def fsync(fd):
        target = Path(os.readlink(f"/proc/self/fd/{fd}")).name  # atomic_write's temporary file
        if re.fullmatch(rf"\.{re.escape(name)}\.\w+\.tmp", target) and once_exists.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_full_disk_gives_one_line_and_keeps_the_previous_files(tmp_path, monkeypatch):
    from general_functions.checkpoint import load_checkpoint

    run_dir = tmp_path / "runs" / "r"
    _disk_full_for(monkeypatch, "last.pth", run_dir / "last.pth")
    argv = _train_argv(tmp_path, _arch_file(tmp_path), "--epochs", "2", "--run_name", "r")
    message = _refused(argv)
    assert message.startswith(
        f"error: no space left on the device to write {run_dir / 'last.pth'} ("
    )
    assert f"MB free in {run_dir}); the previous last.pth, if any, is kept" in message
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / ".run.lock").exists()
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "s"
    _disk_full_for(monkeypatch, "thetas.json", run_dir / "thetas.json")
    message = _search_refused(_search_argv(tmp_path))
    assert message.startswith(
        f"error: no space left on the device to write {run_dir / 'thetas.json'}"
    )
    assert (
        json.loads((run_dir / "thetas.json").read_text())["epoch"] == 1
    )  # the first epoch's, kept


def test_a_full_disk_while_appending_to_metrics_csv_gives_one_line(tmp_path, monkeypatch):
    import errno

    from general_functions import logging_utils
    from general_functions.io_utils import DiskFullError

    writer = logging_utils.MetricWriter(tmp_path)
    writer.scalars(1, {"loss": 1.0})

    class FullDisk:
        def __init__(self, *args, **kwargs):
            pass

        def writerow(self, row):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logging_utils.csv, "DictWriter", FullDisk)
    with pytest.raises(DiskFullError, match=f"to write {tmp_path / 'metrics.csv'} "):
        writer.scalars(2, {"loss": 0.5})
    monkeypatch.undo()
    writer.close()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,loss", "1,1.0"]


def test_a_full_disk_under_tensorboard_or_log_txt_gives_one_line(tmp_path, monkeypatch):
    import errno
    import logging

    from general_functions.io_utils import DiskFullError
    from general_functions.logging_utils import MetricWriter, get_logger

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = MetricWriter(tmp_path)
    writer.scalars(1, {"loss": 1.0})
    monkeypatch.setattr(writer.tb, "flush", full)
    with pytest.raises(DiskFullError, match=rf"to write {tmp_path / 'tb'}/events\.out\.tfevents\."):
        writer.scalars(2, {"loss": 0.5})
    monkeypatch.undo()
    writer.close()

    log = get_logger(tmp_path, name="disk_full_test")
    log.info("kept")
    file = next(h for h in log.handlers if isinstance(h, logging.FileHandler))
    monkeypatch.setattr(file.stream, "write", full)
    with pytest.raises(DiskFullError, match=f"to write {tmp_path / 'log.txt'} "):
        log.info("lost")
    monkeypatch.undo()
    file.close()
    assert (tmp_path / "log.txt").read_text().endswith("kept\n")


def test_a_sampled_architecture_that_cannot_be_written_leaves_no_empty_file(tmp_path, monkeypatch):
    import fbnet_building_blocks.arch_specs as arch_specs
    from general_functions.io_utils import DiskFullError

    def full(path, obj):
        raise DiskFullError(f"no space left on the device to write {path}")

    monkeypatch.setattr(arch_specs, "atomic_write_json", full)
    spec = arch_specs.ArchSpec("mine", TINY_OPS, search_space="tiny")
    with pytest.raises(DiskFullError):
        arch_specs.save_arch(spec, tmp_path)
    assert not (tmp_path / "mine.json").exists()
