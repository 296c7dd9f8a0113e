"""The DARTS-vs-FBNet one-choice experiment: blocks, network, and a short run on synthetic data."""

import csv
import json
import math
import shutil

import pytest
import torch

from supernet_functions.experiments.darts_vs_fbnet import (
    CHOICES,
    BadBlock,
    GoodBlock,
    OneChoiceNet,
    count_params,
    main,
)
from supernet_functions.model_supernet import MixedOperation

EPOCHS, STEPS = 2, 3  # the smoke preset: 2 epochs, at most 3 batches per phase


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _argv(tmp_path, *extra):
    return [
        "--preset",
        "smoke",
        "--progress",
        "False",
        "--log_dir",
        str(tmp_path / "logs"),
        "--pictures_dir",
        str(tmp_path / "pictures"),
        "--run_name",
        "smoke",
        *extra,
    ]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dvf")
    summary = main(_argv(tmp))
    return tmp, summary


def test_blocks_have_equal_params_and_shapes():
    good, bad = GoodBlock(16), BadBlock(16)
    assert count_params(good) == count_params(bad) == 16 * 16 * 9 + 2 * 16
    x = torch.randn(2, 16, 32, 32)
    assert good(x).shape == bad(x).shape == x.shape


def test_bad_block_keeps_one_value_per_4x4_cell():
    bad = BadBlock(4).eval()
    y = bad(torch.randn(1, 4, 32, 32))
    cells = y.unflatten(2, (8, 4)).unflatten(4, (8, 4))  # [1, 4, 8, 4, 8, 4]
    assert torch.equal(cells, cells[:, :, :, :1, :, :1].expand_as(cells))
    good_y = GoodBlock(4).eval()(torch.randn(1, 4, 32, 32))
    cells = good_y.unflatten(2, (8, 4)).unflatten(4, (8, 4))
    assert not torch.equal(cells, cells[:, :, :, :1, :, :1].expand_as(cells))


@pytest.mark.parametrize("slot", ["softmax", "gumbel"])
def test_searched_net_uses_mixed_operation(slot):
    net = OneChoiceNet(slot, channels=8)
    assert isinstance(net.slot, MixedOperation) and net.slot.mixing == slot
    assert torch.equal(net.slot.thetas.detach(), torch.zeros(2))
    weights, arch = net.weight_parameters(), net.arch_parameters()
    assert {id(p) for p in arch} == {id(net.slot.thetas)}
    assert len(weights) + len(arch) == len(list(net.parameters()))
    logits, latency = net(torch.randn(4, 3, 32, 32), temperature=5.0)
    assert logits.shape == (4, 10)
    assert (
        float(latency.detach()) == 0.0
    )  # the candidates cost nothing: the experiment has no latency term
    used = net.slot.last_weights
    assert used.shape == (2,) and math.isclose(float(used.sum()), 1.0, rel_tol=1e-6)
    logits.sum().backward()
    assert net.slot.thetas.grad is not None and net.slot.thetas.grad.abs().sum() > 0


def test_fixed_slot_nets_differ_only_in_the_slot():
    good, bad = OneChoiceNet("good", 8), OneChoiceNet("bad", 8)
    assert count_params(good) == count_params(bad)
    assert not good.searched and good.arch_parameters() == []
    with pytest.raises(ValueError, match="unknown slot"):
        OneChoiceNet("medium", 8)


def test_smoke_run_writes_csv_for_every_mode(smoke_run):
    tmp, summary = smoke_run
    run_dir = tmp / "logs" / "smoke"
    for mode in ("darts", "fbnet"):
        rows = _rows(run_dir / mode / "metrics.csv")
        cols = set(rows[0])
        for name in CHOICES:
            assert {f"mix/{name}", f"prob/{name}", f"thetas/{name}"} <= cols
        assert {"step", "epoch", "train/phase", "train/loss", "sched/temperature"} <= cols
        # every step of both phases is a row: STEPS weight steps + STEPS theta steps per epoch
        assert len(rows) == EPOCHS * 2 * STEPS
        assert [int(float(r["step"])) for r in rows] == list(range(len(rows)))
        phases = [float(r["train/phase"]) for r in rows]
        assert phases == ([0.0] * STEPS + [1.0] * STEPS) * EPOCHS
        for r in rows:
            mix = float(r["mix/good"]) + float(r["mix/bad"])
            prob = float(r["prob/good"]) + float(r["prob/bad"])
            assert math.isclose(mix, 1.0, abs_tol=1e-5) and math.isclose(prob, 1.0, abs_tol=1e-5)
        thetas = [float(r["thetas/good"]) for r in rows]
        # weight steps leave the thetas alone; theta steps move them
        for i in range(1, len(rows)):
            if phases[i] == 0.0:
                assert thetas[i] == thetas[i - 1]
        assert thetas[-1] != 0.0
        mix_good = [float(r["mix/good"]) for r in rows]
        prob_good = [float(r["prob/good"]) for r in rows]
        if mode == "darts":  # deterministic: the weights used are softmax(thetas) before the step
            before = [0.5, *prob_good[:-1]]
            assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(mix_good, before))
        else:  # Gumbel noise: the weights used differ from softmax(thetas) and from step to step
            assert max(abs(a - b) for a, b in zip(mix_good, prob_good)) > 1e-3
            assert len({round(v, 6) for v in mix_good[:STEPS]}) == STEPS
        final = summary["modes"][mode]["final_prob"]
        assert math.isclose(final["good"], prob_good[-1], rel_tol=1e-5)
    for mode in ("good_only", "bad_only"):
        rows = _rows(run_dir / mode / "metrics.csv")
        train = [r for r in rows if r["train/loss"]]
        val = [r for r in rows if r.get("val/top1")]
        assert len(train) == EPOCHS * STEPS and len(val) == EPOCHS
        assert "mix/good" not in rows[0]
        # the summary evaluates the final model again: the same figure as the last epoch's row
        final = summary["modes"][mode]
        assert final["test_top1_eval_subset"] == pytest.approx(float(val[-1]["val/top1"]), abs=1e-4)
    for mode in ("good_only", "bad_only", "darts", "fbnet"):  # each mode folder is a run folder
        lines = (run_dir / mode / "log.txt").read_text().splitlines()
        assert len(lines) == EPOCHS + 1 and all(f" {mode}" in line for line in lines)
        assert json.loads((run_dir / mode / "config.json").read_text())["seed"] == 0
    assert summary["slot_params"]["good"] == summary["slot_params"]["bad"]
    assert list((run_dir / "darts" / "tb").glob("events.out.tfevents.*"))
    saved = json.loads((run_dir / "summary.json").read_text())
    assert set(saved["modes"]) == {"good_only", "bad_only", "darts", "fbnet"}
    names = sorted(p.name for p in (tmp / "pictures").glob("*.png"))
    assert names == [
        "darts_vs_fbnet_darts.png",
        "darts_vs_fbnet_fbnet.png",
        "darts_vs_fbnet_standalone.png",
    ]


def test_rerun_with_the_same_seed_gives_the_same_csv_and_plots(smoke_run, tmp_path):
    tmp, _ = smoke_run
    main(_argv(tmp_path, "--modes", "fbnet"))  # the mode with the most randomness
    first = (tmp / "logs" / "smoke" / "fbnet" / "metrics.csv").read_text()
    again = (tmp_path / "logs" / "smoke" / "fbnet" / "metrics.csv").read_text()
    assert first == again
    png = "darts_vs_fbnet_fbnet.png"
    assert (tmp / "pictures" / png).read_bytes() == (tmp_path / "pictures" / png).read_bytes()
    # and another seed gives other Gumbel draws
    main(_argv(tmp_path, "--modes", "fbnet", "--seed", "1", "--run_name", "seed1"))
    other = _rows(tmp_path / "logs" / "seed1" / "fbnet" / "metrics.csv")
    first = _rows(tmp / "logs" / "smoke" / "fbnet" / "metrics.csv")
    assert [r["mix/good"] for r in other] != [r["mix/good"] for r in first]


def test_plot_only_redraws_from_the_csv(smoke_run, tmp_path):
    tmp, _ = smoke_run
    out = tmp_path / "redrawn"
    argv = _argv(tmp, "--plot_only", "True", "--pictures_dir", str(out))
    summary = main(argv)
    assert len(summary["plots"]) == 3
    png = "darts_vs_fbnet_fbnet.png"
    assert (out / png).read_bytes() == (tmp / "pictures" / png).read_bytes()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown modes"):
        main(_argv(tmp_path, "--modes", "darts,enas"))
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        main(_argv(tmp_path, "--run_name", "empty", "--plot_only", "True"))


def test_a_finished_run_is_kept_unless_overwrite(smoke_run, tmp_path):
    """The trainers' run folder: a second run into the same --run_name is refused in one message
    and leaves the first run's files as they were; --overwrite starts it again."""
    shutil.copytree(smoke_run[0] / "logs", tmp_path / "logs")  # a finished run, not the fixture's
    summary = tmp_path / "logs" / "smoke" / "summary.json"
    before = summary.read_text()
    with pytest.raises(FileExistsError, match="already holds a run.*--overwrite"):
        main(_argv(tmp_path, "--modes", "bad_only", "--epochs", "1"))
    assert summary.read_text() == before
    main(_argv(tmp_path, "--modes", "bad_only", "--epochs", "1", "--overwrite", "True"))
    assert list(json.loads(summary.read_text())["modes"]) == ["bad_only"]
