"""curves.png: drawn from a run's metrics.csv, a search's four panels and a training's two, and a
missing matplotlib costs one log line, not the run."""

import csv
import logging
import struct
import sys

from general_functions import curves


def _write_metrics(folder, rows):
    folder.mkdir()
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _png_size(path):
    """(width, height) from the PNG signature and IHDR chunk."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and blob[12:16] == b"IHDR"
    return struct.unpack(">II", blob[16:24])


def test_a_search_and_a_training_get_their_curves_from_metrics_csv(tmp_path, capsys):
    search = [  # 2 warm-up epochs (no theta steps yet), then 3 search epochs; steps from 0
        {"step": e, "train_w/loss": 2 - 0.1 * e, "train_w/top1": 10 + 3 * e}
        | ({"warmup/train_top1": 13} if e == 1 else {})
        | ({"train_thetas/loss": 2 - 0.1 * e, "train_thetas/top1": 9 + 3 * e} if e > 1 else {})
        | {"search/expected_layers_latency_ms": 4 - 0.2 * e, "search/argmax_layers_latency_ms": 3}
        | {curves.ENTROPY: 1 - 0.1 * max(0, e - 1)}
        for e in range(5)
    ]
    training = [{"step": e, "train/loss": 2 / e, "test/top1": 20 + e} for e in (1, 2, 3)]
    _write_metrics(tmp_path / "search", search)
    _write_metrics(tmp_path / "training", training)

    curves.main([str(tmp_path / "search"), str(tmp_path / "training")])

    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / name / "curves.png") for name in ("search", "training")]
    # two rows of panels for a search (loss, top-1; entropy, latency), one for a training, at 72 dpi
    assert _png_size(tmp_path / "search" / "curves.png") == (648, 460)
    assert _png_size(tmp_path / "training" / "curves.png") == (648, 252)
    assert (tmp_path / "search" / "curves.png").stat().st_size > 20_000  # lines, labels, legends
    assert not list(tmp_path.rglob("*.tmp"))


def test_older_searches_logged_the_layers_latency_under_another_name():
    panels = dict(curves._panels({"step", "train_w/loss", "search/expected_latency_ms"}))
    latency = panels["predicted latency (ms) of the searched layers"]
    assert latency == [("search/expected_latency_ms", "expected")]
    assert panels["softmax(thetas) entropy / ln K (1: uniform)"] == [
        (curves.ENTROPY, "mean over layers")
    ]


def test_without_matplotlib_a_run_says_so_once_and_draws_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FBNET_CURVES", "1")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    caplog.set_level(logging.INFO)
    picture = curves.Curves(tmp_path, logging.getLogger("run"))
    for epoch in (1, 2):
        picture.draw([{"step": epoch, "train/loss": 1.0}])
    assert [r.getMessage() for r in caplog.records] == [
        "no curves.png: matplotlib is not installed (pip install matplotlib)"
    ]
    assert not (tmp_path / "curves.png").exists()
