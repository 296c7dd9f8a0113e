"""End to end on synthetic data: search -> sample -> retrain, exact resume, same seed same losses."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from fbnet_building_blocks.search_space import CANDIDATE_OPS
from general_functions.config_utils import config_from_dict
from supernet_functions.config_for_supernet import PRESETS, SupernetConfig
from supernet_functions.latency.table import LatencyLookupTable
from supernet_functions.training_functions_supernet import run

OPS = list(CANDIDATE_OPS)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def lut_path(tmp_path) -> Path:
    """A hand-made table for the 4-layer space: layer i, op j costs 0.2 + 0.1 * i + 0.03 * j ms."""
    rows = [{op: 0.2 + 0.1 * i + 0.03 * j for j, op in enumerate(OPS)} for i in range(4)]
    lut = LatencyLookupTable.from_latencies("tiny", rows, fixed_ms={"stem": 0.1, "head": 0.2})
    path = tmp_path / "tiny_lut.json"
    path.write_text(json.dumps(lut.to_dict()))
    return path


def _cfg(tmp_path, lut_path, **kw) -> SupernetConfig:
    values = {**PRESETS["smoke"], "fake_train_size": 40, "batch_size": 10, "epochs": 3}
    values.update(lut_path=str(lut_path), log_dir=str(tmp_path / "runs"), progress=False, **kw)
    return config_from_dict(SupernetConfig, values)


def _tb_tags(run_dir: Path) -> dict[str, str]:
    """Tag -> kind (simple_value, histo, image) of every summary in the run's event files."""
    import struct

    from tensorboardX.proto import event_pb2

    tags = {}
    for path in (run_dir / "tb").glob("events.out.tfevents.*"):
        blob, pos = path.read_bytes(), 0
        while pos < len(blob):  # TFRecord: [len u64][crc u32][data][crc u32]
            (length,) = struct.unpack_from("<Q", blob, pos)
            event = event_pb2.Event.FromString(blob[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            tags.update({v.tag: v.WhichOneof("value") for v in event.summary.value})
    return tags


def _rows(run_dir: Path) -> list[dict]:
    """metrics.csv without the wall-time column (the only one two identical runs differ in)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "time/wall_s"} for r in csv.DictReader(f)]


def test_search_logs_everything_and_resumes_exactly(tmp_path, lut_path, monkeypatch):
    with monkeypatch.context() as env:  # the suite skips the picture elsewhere (conftest.py)
        env.setenv("FBNET_CURVES", "1")
        full = run(_cfg(tmp_path, lut_path, run_name="full", val_fraction=0.2))
    full_dir = Path(full["run_dir"])
    names = ("config.json", "log.txt", "metrics.csv", "thetas.json", "lut.json", "arch.json")
    for name in (*names, "curves.png"):
        assert (full_dir / name).is_file(), name
    assert (full_dir / "last.pth").is_file() and (full_dir / "best.pth").is_file()
    tags = _tb_tags(full_dir)
    assert tags["thetas/heatmap"] == "image"
    assert all(tags[f"thetas/layer_{i:02d}"] == "histo" for i in range(4))
    for tag in ("train_thetas/loss", "train_thetas/ce", "train_w/top1", "sched/temperature"):
        assert tags[tag] == "simple_value", tag
    assert tags["search/expected_layers_latency_ms"] == tags["sched/w_lr"] == "simple_value"
    rows = _rows(full_dir)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # epochs done, as in training
    assert rows[0]["train_thetas/loss"] == ""  # warm-up: weights only
    # what moved the thetas: both parts of their gradient, every search epoch
    assert all(float(r[f"train_thetas/grad_{k}"]) > 0 for r in rows[1:] for k in ("ce", "latency"))
    assert float(rows[2]["sched/temperature"]) < float(rows[1]["sched/temperature"])
    arch = json.loads((full_dir / "arch.json").read_text())
    assert len(arch["ops"]) == 4 and set(arch["ops"]) <= set(OPS)
    lut = LatencyLookupTable.load(full_dir / "lut.json")
    assert full["argmax_cost"] == pytest.approx(lut.predict(arch["ops"]))
    assert arch["source"]["predicted_latency_ms"] == pytest.approx(full["argmax_cost"])
    # two argmax figures, two names: metrics.csv prices the searched layers, summary.json the network
    layers = float(rows[-1]["search/argmax_layers_latency_ms"])
    assert lut.fixed_cost > 0 and layers + lut.fixed_cost == pytest.approx(full["argmax_cost"])
    assert "search/argmax_latency_ms" not in rows[-1]
    # the weights' accuracy before the first theta step, the wall time and the final thetas
    log = (full_dir / "log.txt").read_text()
    assert f"warm-up done: train top1 {float(rows[0]['train_w/top1']):.2f}%" in log
    assert float(rows[0]["warmup/train_top1"]) == pytest.approx(float(rows[0]["train_w/top1"]))
    summary = json.loads((full_dir / "summary.json").read_text())
    assert summary["warmup_train_top1"] == pytest.approx(float(rows[0]["train_w/top1"]))
    assert summary["wall_s"] > 0 and "done:" in log and "wall time" in log
    # "epoch" counts the epochs done, as the log's last "epoch 3/3" does
    assert summary["epoch"] == full["epoch"] == 3 and re.findall(r"epoch (\d)/3", log)[-1] == "3"
    probs = torch.softmax(
        torch.tensor(json.loads((full_dir / "thetas.json").read_text())["thetas"]), 1
    )
    final = summary["final_thetas"]
    assert final["largest_probability"] == pytest.approx(probs.max(1).values.tolist(), abs=1e-4)
    entropy = [-sum(p * math.log(p) for p in row) for row in probs.tolist()]
    assert final["entropy"] == pytest.approx(entropy, abs=1e-4)
    assert final["entropy_uniform"] == pytest.approx(math.log(len(OPS)), abs=1e-4)
    entropy_column = float(rows[-1]["search/thetas_normalised_entropy"])
    uniform = math.log(len(OPS))
    assert entropy_column == pytest.approx(sum(entropy) / len(entropy) / uniform, abs=1e-4)
    assert entropy_column == pytest.approx(final["normalised_entropy"])
    assert float(rows[0]["search/thetas_normalised_entropy"]) == 1  # uniform in the warm-up
    assert "final thetas: largest probability per layer" in log

    # same seed, a run stopped after 2 epochs: identical losses; resumed: identical to the end
    part = run(_cfg(tmp_path, lut_path, run_name="part", val_fraction=0.2, stop_after_epoch=2))
    part_dir = Path(part["run_dir"])
    assert _rows(part_dir) == rows[:2]
    run(_cfg(tmp_path, lut_path, val_fraction=0.2, resume=str(part_dir / "last.pth")))
    assert _rows(part_dir) == rows
    a = json.loads((full_dir / "thetas.json").read_text())
    b = json.loads((part_dir / "thetas.json").read_text())
    assert a["thetas"] == b["thetas"] and a["epoch"] == b["epoch"] == 3
    # the path diagnostic: every epoch, in metrics.csv, TensorBoard and summary.json, unchanged by a
    # resume (it draws its paths with a generator of its own)
    assert [p["epoch"] for p in full["path_probe"]] == [1, 2, 3]
    assert [float(r["paths/argmax_top1"]) for r in rows] == pytest.approx(
        [p["argmax_top1"] for p in full["path_probe"]], abs=1e-3
    )
    assert tags["paths/sampled_top1_mean"] == "simple_value" and "paths: argmax top1" in log
    assert json.loads((part_dir / "summary.json").read_text())["path_probe"] == full["path_probe"]


def test_a_search_on_drawn_paths_through_shared_convs_resumes_exactly(tmp_path, lut_path):
    kw = {"w_mixing": "sampled", "weight_sharing": True, "min_temperature": 4.9}
    full = run(_cfg(tmp_path, lut_path, run_name="full", **kw))
    part = run(_cfg(tmp_path, lut_path, run_name="part", stop_after_epoch=2, **kw))
    run(_cfg(tmp_path, lut_path, resume=str(Path(part["run_dir"]) / "last.pth")))
    rows = _rows(Path(full["run_dir"]))
    assert _rows(Path(part["run_dir"])) == rows
    assert [float(r["sched/temperature"]) for r in rows] == [5.0, 5.0, 4.9]  # the floor


def test_a_search_that_measured_its_own_table_resumes(tmp_path):
    """The table's header goes into the checkpoint, which loads with weights_only=True."""
    values = {**PRESETS["smoke"], "fake_train_size": 40, "batch_size": 10, "epochs": 2}
    values.update(log_dir=str(tmp_path / "runs"), progress=False, run_name="fresh")
    part = run(config_from_dict(SupernetConfig, {**values, "stop_after_epoch": 1}))
    last = Path(part["run_dir"]) / "last.pth"
    assert type(LatencyLookupTable.load(last.parent / "lut.json").meta["torch_version"]) is str
    done = run(config_from_dict(SupernetConfig, {**values, "resume": str(last)}))
    assert done["epoch"] == 2 and len(done["path_probe"]) == 2


def test_resume_refuses_other_settings(tmp_path, lut_path):
    from general_functions.config_utils import ConfigError

    first = run(_cfg(tmp_path, lut_path, run_name="a", epochs=2, stop_after_epoch=1))
    with pytest.raises(ConfigError, match="--batch_size 8 contradicts the checkpoint's 10"):
        run(_cfg(tmp_path, lut_path, batch_size=8, resume=str(Path(first["run_dir"]) / "last.pth")))


def test_a_table_with_non_positive_log_is_refused(tmp_path):
    rows = [{op: 1e-5 for op in OPS} for _ in range(4)]
    path = tmp_path / "fast.json"
    path.write_text(json.dumps(LatencyLookupTable.from_latencies("tiny", rows).to_dict()))
    with pytest.raises(ValueError, match="not positive"):
        run(_cfg(tmp_path, path, run_name="bad"))


def test_a_flops_table_drives_the_search_the_same_way(tmp_path):
    from supernet_functions.sampling import sample_and_save

    rows = [{op: 0.5 + 0.2 * j for j, op in enumerate(OPS)} for _ in range(4)]
    lut = LatencyLookupTable.from_latencies("tiny", rows, cost="flops", unit="M multiply-adds")
    path = tmp_path / "flops.json"
    lut.save(path)
    out = run(_cfg(tmp_path, path, run_name="flops", epochs=2, stop_after_epoch=2))
    run_dir = Path(out["run_dir"])
    assert "search/expected_layers_flops" in _rows(run_dir)[0]
    (record,) = sample_and_save(run_dir, "by_flops", arch_dir=tmp_path / "archs")
    assert record["predicted_latency_ms"] is None  # not a latency table
    saved = json.loads(Path(record["path"]).read_text())["source"]
    assert saved["predicted_cost"] == pytest.approx(lut.predict(record["ops"]))
    assert saved["unit"] == "M multiply-adds"


def test_cli_search_sample_and_retrain(tmp_path, monkeypatch, capsys):
    """The contract: train (the table measured or committed), sample NAME, retrain NAME."""
    import supernet_main_file

    monkeypatch.setenv("FBNET_ARCH_DIR", str(tmp_path / "archs"))
    logs = str(tmp_path / "runs")
    common = ["--log_dir", logs, "--progress", "False"]
    supernet_main_file.main(
        ["--train_or_sample", "train", "--preset", "smoke", "--fake_train_size", "40"]
        + ["--batch_size", "10", "--run_name", "cli"]
        + common
    )
    assert LatencyLookupTable.load(Path(logs) / "cli" / "lut.json").meta["search_space"] == "tiny"
    capsys.readouterr()
    supernet_main_file.main(
        ["--train_or_sample", "sample", "--architecture_name", "smoke_net"]
        + ["--hardsampling_bool_value", "True", "--log_dir", logs]
    )
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["name"] == "smoke_net" and len(record["ops"]) == 4
    assert record["predicted_latency_ms"] > 0 and Path(record["path"]).is_file()
    saved = json.loads(Path(record["path"]).read_text())
    assert saved["source"]["run"].endswith("cli") and saved["source"]["epoch"] == 3

    import architecture_main_file

    summary = architecture_main_file.main(
        ["--architecture_name", "smoke_net", "--preset", "smoke", "--log_dir", logs]
        + ["--train_limit", "64", "--test_limit", "32", "--batch_size", "32", "--progress", "False"]
    )
    assert summary["architecture"] == "smoke_net" and summary["epochs"] == 1


@pytest.mark.parametrize("mode", ["build_lut", "validate_lut"])
def test_table_commands_go_to_lut_cli_with_the_full_argv(mode, monkeypatch):
    import supernet_main_file
    from supernet_functions.latency import cli as lut_cli

    seen = []
    monkeypatch.setattr(lut_cli, "main", lambda argv: seen.append(argv) or {})
    argv = ["--train_or_sample", mode, "--lut_path", "luts/x.json", "--input_size", "32"]
    supernet_main_file.main(argv)
    assert seen == [argv]


@pytest.mark.slow  # two smoke searches; tests/test_loss.py checks the hinge itself in the default suite
def test_the_search_keeps_the_epoch_with_the_best_held_out_top1_as_best_pth(
    tmp_path, lut_path, monkeypatch
):
    """On 40 random images every epoch is at chance, so the held-out scores are scripted: 20, 35, 30."""
    import supernet_functions.training_functions_supernet as search

    scores, real = iter([20.0, 35.0, 30.0]), search.validate

    def validate(*args, **kwargs):
        return {**real(*args, **kwargs), "top1": next(scores)}

    monkeypatch.setattr(search, "validate", validate)
    out = run(_cfg(tmp_path, lut_path, run_name="best", val_fraction=0.2, save_checkpoints=True))
    run_dir = Path(out["run_dir"])
    assert [float(r["held_out/top1"]) for r in _rows(run_dir)] == [20.0, 35.0, 30.0]
    best = torch.load(run_dir / "best.pth", weights_only=True)
    last = torch.load(run_dir / "last.pth", weights_only=True)
    assert (best["epoch"], best["best_top1"], last["epoch"]) == (2, 35.0, 3)  # epochs done
    assert any(not torch.equal(v, last["model"][k]) for k, v in best["model"].items())  # epoch 1's


@pytest.mark.slow  # two searches, 8-10 s; the hinge itself has its unit test in test_loss.py
def test_a_lower_latency_target_gives_a_faster_argmax_on_the_smoke_preset(tmp_path):
    """The smoke preset with a table where skip is cheapest: seeded, so only the target differs."""
    rows = [{op: 0.3 if op == "skip" else 1.0 + 0.5 * j for j, op in enumerate(OPS)}] * 4
    lut = LatencyLookupTable.from_latencies("tiny", rows, fixed_ms={"stem": 0.1, "head": 0.2})
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(lut.to_dict()))
    dearest = lut.predict([max(r, key=r.get) for r in rows])  # 18.3 ms: no latency pressure at all
    argmax_ms = {}
    for target in (6.0, dearest):  # 6 ms: below what uniform thetas cost (10.3 ms), so it binds
        values = {**PRESETS["smoke"], "lut_path": str(path), "log_dir": str(tmp_path / "runs")}
        values.update(progress=False, save_checkpoints=False, target_latency_ms=target)
        argmax_ms[target] = run(config_from_dict(SupernetConfig, values))["argmax_cost"]
    assert argmax_ms[6.0] < argmax_ms[dearest] - 5.0  # 2.7 vs 12.8 ms when written


def test_the_cpu_cifar10_preset_uses_a_committed_32x32_table_and_spans_the_temperatures():
    from fbnet_building_blocks.structure import Structure
    from supernet_functions.latency import measure as ltb
    from supernet_functions.latency.table import LatencyLookupTable
    from supernet_functions.training_functions_supernet import temperature_at

    cfg = config_from_dict(SupernetConfig, PRESETS["cpu_cifar10"])
    table = LatencyLookupTable.load(ltb.default_lut_path(cfg.search_space, 32))
    # the committed table priced the structure the preset searches (and the trainer trains)
    table.check_compatible(cfg.search_space, 32, structure=Structure.from_config(cfg))
    assert cfg.mixing == "gumbel" and cfg.bn_init == "uniform" and cfg.dataset == "cifar10"
    assert cfg.w_mixing == "sampled" and cfg.weight_sharing
    temps = [temperature_at(e, cfg) for e in range(cfg.warmup_epochs, cfg.epochs)]
    assert temps[0] == 5.0 and temps[-1] == pytest.approx(0.137, abs=1e-3)  # near the paper's 0.09
