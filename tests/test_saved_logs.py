"""Every committed run under SAVED_LOGS stays readable and consistent: CSV, TensorBoard events,
config, architectures that build and run, search results that follow from their thetas and table."""

import csv
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from tensorboardX.proto import event_pb2

from fbnet_building_blocks.arch_specs import load_arch
from fbnet_building_blocks.fbnet_builder import get_model
from supernet_functions.sampling import load_table

SAVED = Path(__file__).resolve().parent.parent / "SAVED_LOGS"
RUNS = sorted(p.parent for p in SAVED.rglob("metrics.csv"))


def read_events(path: Path) -> list[event_pb2.Event]:
    """Read a TFRecord event file: [len u64][crc u32][data][crc u32] records."""
    events, blob, pos = [], path.read_bytes(), 0
    while pos < len(blob):
        (length,) = struct.unpack_from("<Q", blob, pos)
        data = blob[pos + 12 : pos + 12 + length]
        assert len(data) == length, f"{path} is truncated"
        events.append(event_pb2.Event.FromString(data))
        pos += 12 + length + 4
    return events


def test_saved_logs_hold_the_runs_the_readme_cites():
    kinds = {p.relative_to(SAVED).parts[0] for p in RUNS}
    assert {"supernet_training", "architectures_training"} <= kinds


@pytest.mark.parametrize("run", RUNS, ids=[str(p.relative_to(SAVED)) for p in RUNS])
def test_run_folder_loads(run):
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and "step" in rows[0]
    for row in rows:
        for key, value in row.items():
            if value not in ("", None):
                assert math.isfinite(float(value)), (key, value)
    event_files = list((run / "tb").rglob("events.out.tfevents.*"))
    assert event_files, f"{run} has no TensorBoard events"
    scalars = [
        v.tag for f in event_files for e in read_events(f) for v in e.summary.value if e.summary
    ]
    assert scalars, f"{run}: event files hold no summaries"
    assert (run / "log.txt").is_file()
    if (run / "config.json").exists():
        assert isinstance(json.loads((run / "config.json").read_text()), dict)
    for arch_file in run.glob("*.json"):
        data = json.loads(arch_file.read_text())
        if isinstance(data, dict) and "ops" in data:
            spec = load_arch(str(arch_file))
            model = get_model(spec, 10, input_size=32).eval()
            with torch.no_grad():
                logits = model(torch.randn(2, 3, 32, 32))
            assert logits.shape == (2, 10) and torch.isfinite(logits).all(), arch_file


SEARCHES = sorted(p.parent for p in SAVED.glob("supernet_training/*/thetas.json"))
TRAININGS = sorted(p.parent for p in SAVED.glob("architectures_training/*/summary.json"))


@pytest.mark.parametrize("run", SEARCHES, ids=[p.name for p in SEARCHES])
def test_search_run_arch_is_the_argmax_of_its_thetas_and_priced_by_its_table(run):
    """arch.json holds each layer's argmax of thetas.json, at the latency its lut.json predicts."""
    state = json.loads((run / "thetas.json").read_text())
    arch = json.loads((run / "arch.json").read_text())
    thetas = torch.tensor(state["thetas"])
    assert thetas.shape == (len(arch["ops"]), len(state["candidate_ops"]))
    argmax = [state["candidate_ops"][i] for i in thetas.argmax(dim=1).tolist()]
    assert arch["ops"] == argmax == state["argmax_ops"]
    lut = load_table(run / "lut.json")
    expected = lut.predict(arch["ops"])
    assert arch["source"]["predicted_latency_ms"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("run", TRAININGS, ids=[p.name for p in TRAININGS])
def test_training_summary_is_the_last_row_of_its_metrics(run):
    """summary.json's final figures are the last epoch's row; its best is the best row."""
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["epochs"] == int(rows[-1]["step"])
    assert summary["final_top1"] == pytest.approx(float(rows[-1]["test/top1"]), abs=0.01)
    assert summary["final_top3"] == pytest.approx(float(rows[-1]["test/top3"]), abs=0.01)
    best = max(range(len(rows)), key=lambda i: float(rows[i]["test/top1"]))
    assert summary["best_epoch"] == best + 1
    assert summary["best_top1"] == pytest.approx(float(rows[best]["test/top1"]), abs=0.01)
