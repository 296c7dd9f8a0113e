"""Training an architecture from scratch: artefacts, learning, exact resume, refusals, clear errors.

Every run uses the 4-layer ``tiny`` search space on synthetic data with one thread, so the file takes
seconds. No test reads the real CIFAR-10 copy.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from architecture_functions.config_for_arch import ArchTrainConfig
from architecture_functions.training_functions import run, train_one_epoch
from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.fbnet_builder import get_model
from general_functions.checkpoint import CheckpointError, load_checkpoint
from general_functions.config_utils import ConfigError, config_from_dict
from general_functions.dataloaders import DataError, make_fake_data, make_loader

REPO = Path(__file__).resolve().parent.parent
OPS_A = ["ir_k3_e3", "ir_k5_e1", "skip", "ir_k3_s2"]
OPS_B = ["ir_k3_e1", "ir_k3_e1", "ir_k5_e6", "skip"]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _arch_file(folder: Path, name: str, ops: list[str]) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"name": name, "ops": ops, "search_space": "tiny"}))
    return str(path)


def _cfg(tmp_path: Path, **kw) -> ArchTrainConfig:
    values = {
        "architecture_name": _arch_file(tmp_path, "tiny_a", OPS_A),
        "dataset": "fake",
        "fake_train_size": 256,
        "fake_test_size": 128,
        "batch_size": 64,
        "epochs": 2,
        "threads": 1,
        "progress": False,
        "log_dir": str(tmp_path / "runs"),
        "run_name": "r",
    }
    values.update(kw)
    return config_from_dict(ArchTrainConfig, values)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the wall-clock column."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if not k.startswith("time/")} for r in csv.DictReader(f)
        ]


def test_run_writes_run_folder_and_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FBNET_CURVES", "1")  # the suite skips the picture elsewhere (conftest.py)
    summary = run(_cfg(tmp_path))
    run_dir = tmp_path / "runs" / "r"
    for name in ("config.json", "arch.json", "log.txt", "metrics.csv", "last.pth", "best.pth"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run_dir / "tb").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 64
    # The last stdout line is the JSON summary, and it agrees with metrics.csv.
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == summary
    rows = _rows(run_dir)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert summary["epochs"] == 2
    assert summary["final_top1"] == pytest.approx(float(rows[-1]["test/top1"]), abs=1e-3)
    assert summary["best_top1"] == pytest.approx(max(float(r["test/top1"]) for r in rows), abs=1e-3)
    assert summary["final_top3"] >= summary["final_top1"]
    assert "chosen on the test set" in (run_dir / "log.txt").read_text()
    state = load_checkpoint(run_dir / "best.pth", stage="architecture")
    assert state["epoch"] == summary["best_epoch"]
    assert state["arch_spec"]["ops"] == OPS_A


def test_train_one_epoch_lowers_the_loss():
    """Repeated epochs over 32 fixed images (no augmentation) drive the loss down and top-1 up."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = make_fake_data(32, 8, seed=1)
    model = get_model(ArchSpec("t", OPS_A, "tiny"), cnt_classes=10)
    loader = make_loader(data.train, 32, train=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    first = train_one_epoch(
        model, loader, criterion, optimizer, torch.device("cpu"), 1, progress=False
    )
    for epoch in range(2, 31):
        last = train_one_epoch(
            model, loader, criterion, optimizer, torch.device("cpu"), epoch, progress=False
        )
    assert math.isfinite(last["loss"])
    assert last["loss"] < 0.5 * first["loss"]
    assert last["top1"] > 50


def test_lr_warmup_rises_per_step_and_hands_back_the_schedule():
    """--lr_warmup_epochs 2 over 3 steps an epoch: steps 1..6 run at k/6 of the scheduled lr, each
    epoch's end restores the scheduled lr, and epoch 3 runs at the schedule."""
    torch.manual_seed(0)
    data = make_fake_data(24, 8, seed=1)
    model = get_model(ArchSpec("t", OPS_A, "tiny"), cnt_classes=10)
    loader = make_loader(data.train, 8, train=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    criterion = torch.nn.CrossEntropyLoss()
    scheduled = [0.3, 0.2, 0.1]
    for epoch, lr in enumerate(scheduled, 1):
        optimizer.param_groups[0]["lr"] = lr  # as a per-epoch scheduler would set it
        train_one_epoch(
            model,
            loader,
            criterion,
            optimizer,
            torch.device("cpu"),
            epoch,
            progress=False,
            warmup_epochs=2,
        )
        assert optimizer.param_groups[0]["lr"] == lr
    expected = [0.3 * k / 6 for k in (1, 2, 3)] + [0.2 * k / 6 for k in (4, 5, 6)] + [0.1] * 3
    assert seen == pytest.approx(expected)


def test_cosine_schedule_in_metrics(tmp_path):
    run(_cfg(tmp_path, epochs=3, lr_schedule="cosine", lr=0.2, max_steps_per_epoch=1))
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "runs" / "r")]
    expected = [0.1 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
    assert lrs == pytest.approx(expected)


def test_stop_and_resume_matches_uninterrupted_run(tmp_path):
    full = run(_cfg(tmp_path, run_name="full"))
    run(_cfg(tmp_path, run_name="part", stop_after_epoch=1))
    part_dir = tmp_path / "runs" / "part"
    assert load_checkpoint(part_dir / "last.pth")["epoch"] == 1
    with pytest.raises(ConfigError, match="--run_name other names another folder than part"):
        run(_cfg(tmp_path, run_name="other", resume=str(part_dir / "last.pth")))
    resumed = run(_cfg(tmp_path, run_name="part", resume=str(part_dir / "last.pth")))
    assert not (tmp_path / "runs" / "other").exists()  # a resumed run continues in its folder
    assert _rows(part_dir) == _rows(tmp_path / "runs" / "full")
    for key in ("best_top1", "final_top1", "final_top3", "epochs"):
        assert resumed[key] == full[key]
    a = load_checkpoint(part_dir / "last.pth")["model"]
    b = load_checkpoint(tmp_path / "runs" / "full" / "last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # a fresh process killed mid-run; test_stop_and_resume covers the resume itself
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """A process killed with SIGKILL after its first epoch, resumed, gives the uninterrupted metrics."""
    kw = {"epochs": 3, "fake_train_size": 512}
    run(_cfg(tmp_path, run_name="full", **kw))
    cfg = _cfg(tmp_path, run_name="killed", **kw)
    args = [sys.executable, str(REPO / "architecture_main_file.py")]
    for key, value in vars(cfg).items():
        if value not in ("", None) and key != "milestones":
            args += [f"--{key}", str(value)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "runs" / "killed" / "last.pth"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    stopped_at = load_checkpoint(last)["epoch"]
    assert 1 <= stopped_at < 3
    run(_cfg(tmp_path, run_name="killed", resume=str(last), **kw))
    assert _rows(tmp_path / "runs" / "killed") == _rows(tmp_path / "runs" / "full")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    run(_cfg(tmp_path, epochs=1, max_steps_per_epoch=1))
    ckpt = str(tmp_path / "runs" / "r" / "last.pth")
    other = _arch_file(tmp_path, "tiny_b", OPS_B)
    with pytest.raises(CheckpointError, match="holds architecture 'tiny_a'.*builds 'tiny_b'"):
        run(_cfg(tmp_path, architecture_name=other, resume=ckpt, epochs=2))
    with pytest.raises(CheckpointError, match="holds architecture 'tiny_a'"):
        run(_cfg(tmp_path, architecture_name=other, checkpoint=ckpt, eval_only=True))


def test_eval_only_reproduces_best_checkpoint(tmp_path, capsys):
    summary = run(_cfg(tmp_path))
    best = str(tmp_path / "runs" / "r" / "best.pth")
    evaluated = run(_cfg(tmp_path, eval_only=True, checkpoint=best))
    assert evaluated["eval_only"] is True
    assert evaluated["final_top1"] == summary["best_top1"]


def test_torchvision_loader_path_trains_and_tests_like_the_tensor_path(tmp_path):
    kw = {"epochs": 1, "channels_last": "off"}
    summary = run(_cfg(tmp_path, loader="torchvision", workers=0, **kw))
    last = tmp_path / "runs" / "r" / "last.pth"
    assert load_checkpoint(last)["epoch"] == 1
    # the same weights tested through the tensor path: both paths prepare test images alike
    again = run(_cfg(tmp_path, run_name="e", eval_only=True, checkpoint=str(last), **kw))
    assert again["final_top1"] == pytest.approx(summary["final_top1"], abs=1e-3)
    assert again["final_top3"] == pytest.approx(summary["final_top3"], abs=1e-3)


def test_missing_data_folder_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, dataset="cifar10", data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError, match="no CIFAR-10 at"):
        run(cfg)
    import architecture_main_file

    argv = ["--dataset", "cifar10", "--data_dir", str(tmp_path / "nowhere"), "--download", "False"]
    with pytest.raises(SystemExit) as exit_:  # the entry point: one line, which Python prints alone
        architecture_main_file.main([*argv, "--log_dir", str(tmp_path / "runs")])
    assert str(exit_.value.code).startswith("error: no CIFAR-10 at")
    assert "\n" not in str(exit_.value.code)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_trimmed_depthwise_conv_equals_full_conv(size, kernel, stride):
    """Skipping the taps that only see padding changes neither outputs nor gradients."""
    from fbnet_building_blocks.trim_kernels import TrimmedConv2d

    full = torch.nn.Conv2d(6, 6, kernel, stride, kernel // 2, groups=6)
    trimmed = torch.nn.Conv2d(6, 6, kernel, stride, kernel // 2, groups=6)
    trimmed.load_state_dict(full.state_dict())
    trimmed.__class__ = TrimmedConv2d
    x = torch.randn(2, 6, size, size, requires_grad=True)
    y_full, y_trim = full(x), trimmed(x)
    assert y_trim.shape == y_full.shape
    torch.testing.assert_close(y_trim, y_full, rtol=1e-5, atol=1e-6)
    g_full = torch.autograd.grad(y_full.square().sum(), [x, full.weight, full.bias])
    g_trim = torch.autograd.grad(y_trim.square().sum(), [x, trimmed.weight, trimmed.bias])
    for a, b in zip(g_trim, g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_trim_depthwise_convs_keeps_the_model():
    from fbnet_building_blocks.trim_kernels import TrimmedConv2d, trim_depthwise_convs

    torch.manual_seed(0)
    model = get_model("fbnet_a", cnt_classes=10, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    before, keys = model(x), list(model.state_dict())
    swapped = trim_depthwise_convs(model)
    depthwise = [m for m in model.modules() if isinstance(m, TrimmedConv2d)]
    assert swapped == len(depthwise) > 0
    assert all(m.groups == m.in_channels for m in depthwise)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
