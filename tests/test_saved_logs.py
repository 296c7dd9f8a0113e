"""Every committed run under SAVED_LOGS must stay readable: CSV, TensorBoard events, config, architecture."""

import csv
import json
import math
import struct
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from fbnet_building_blocks.arch_specs import load_arch
from fbnet_building_blocks.fbnet_builder import get_model

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
            assert get_model(spec, 10, input_size=32) is not None
