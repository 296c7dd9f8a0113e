"""bench/bench_lut.py: two tables compared with and without their common speed factor, and a table
checked against networks timed in plain processes of their own."""

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fbnet_building_blocks.arch_specs import ARCHS
from supernet_functions.latency.measure import build_cost_table, build_lut
from supernet_functions.latency.validate import compare, sample_archs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_lut():
    spec = importlib.util.spec_from_file_location("bench_lut", ROOT / "bench" / "bench_lut.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agree_separates_a_common_speed_factor_from_the_rest(bench_lut, tmp_path, capsys):
    table = json.loads((ROOT / "luts" / "fbnet_32_cpu.json").read_text())
    a = tmp_path / "a.json"
    a.write_text(json.dumps(table))
    for entries in [*table["layers"], table["fixed"]]:
        for entry in entries.values():
            entry["median"] *= 0.9  # a machine 10% faster in every entry alike
    faster = tmp_path / "b.json"
    faster.write_text(json.dumps(table))
    out = bench_lut.main(["agree", "--lut_a", str(a), "--lut_b", str(faster)])
    assert out["entry_median_diff_percent"] == pytest.approx(0.1 / 0.95 * 100, abs=0.01)
    assert out["prediction_median_diff_percent"] == pytest.approx(0.1 / 0.9 * 100, abs=0.01)
    assert out["b_over_a_median"] == pytest.approx(0.9)
    assert out["entry_median_diff_after_that_factor_percent"] == pytest.approx(0.0, abs=0.01)
    assert out["same_fastest_op_layers"] == "22/22"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    lut = build_lut("tiny", rounds=1, reps=1, warmup=0, threads=1, progress=False)
    return lut, lut.save(tmp_path_factory.mktemp("lut") / "tiny.json")


def _check_independent(out, lut, repeats):
    assert out["num_archs"] == 4 and out["threads"] == 1 and len(out["repeats"]) == repeats
    assert out["lut_allocator"] == "default"  # the table's own setting, recorded beside
    specs = sample_archs(lut, 4, 0)  # and no FBNet-A/B/C: the tiny space has 4 layers
    assert [a["name"] for a in out["archs"]] == [s.name for s in specs]
    predicted = [lut.predict(s.ops) for s in specs]  # unrounded: the figures were scored on these
    stored = [a["predicted_ms"] for a in out["archs"]]  # rounded to 3 decimals
    assert stored == pytest.approx(predicted, abs=6e-4)
    for repeat in out["repeats"]:  # each repeat's figures are those of its own process's timings
        assert min(repeat["measured_ms"]) > 0
        figures = compare(predicted, repeat["measured_ms"])
        assert repeat["kendall_tau"] == pytest.approx(figures["kendall_tau"], abs=1e-3)
        assert repeat["mape_percent"] == pytest.approx(figures["mape_percent"], abs=1e-3)
    taus = [r["kendall_tau"] for r in out["repeats"]]
    assert out["median_kendall_tau"] == pytest.approx(np.median(taus), abs=1e-4)
    per_network = np.median([r["measured_ms"] for r in out["repeats"]], axis=0)
    assert [a["measured_ms"] for a in out["archs"]] == pytest.approx(per_network, abs=6e-4)


def test_independent_scores_each_timing_process_and_their_median(
    bench_lut, tiny_table, tmp_path, monkeypatch
):
    lut, path = tiny_table
    jobs = []

    def in_process(cmd, input, **kwargs):  # the worker's code, without starting a process
        assert cmd[1:] == [bench_lut.__file__, "_worker"]
        job = json.loads(input)
        jobs.append(job)
        out = json.dumps(bench_lut._time_networks(job))
        return subprocess.CompletedProcess(cmd, 0, stdout=out + "\n", stderr="")

    monkeypatch.setattr(bench_lut.subprocess, "run", in_process)
    argv = ["independent", "--lut_path", str(path), "--repeats", "3", "--num_random", "4"]
    out = bench_lut.main([*argv, "--rounds", "2", "--reps", "1", "--out", str(tmp_path / "o.json")])
    assert json.loads((tmp_path / "o.json").read_text()) == out
    assert len(jobs) == 3 and jobs[0]["threads"] == 1 and jobs[0]["rounds"] == 2
    _check_independent(out, lut, repeats=3)


@pytest.mark.slow
def test_independent_times_networks_in_fresh_processes(bench_lut, tiny_table):
    lut, path = tiny_table
    argv = ["independent", "--lut_path", str(path), "--repeats", "2", "--num_random", "4"]
    _check_independent(bench_lut.main([*argv, "--rounds", "2", "--reps", "1"]), lut, repeats=2)


def test_independent_worker_times_fbnet_abc_from_get_model(bench_lut):
    job = {
        "archs": [(n, list(ARCHS[n].ops)) for n in bench_lut.NAMED] + [("skips", ["skip"] * 22)],
        "search_space": "fbnet",
        "input_size": 32,
        "cnt_classes": 10,
        "head_channels": 1504,
        "batch_size": 1,
        "threads": 1,
        "rounds": 2,
        "reps": 1,
        "seed": 0,
    }
    out = bench_lut._time_networks(job)
    assert len(out["ms"]) == 4 and min(out["ms"]) > 0 and out["threads"] == 1
    # the clock sees the networks it was given: FBNet-A/B/C cost several times an all-skip network
    # (the table says 5.6-6.4 ms against 0.4), far beyond the machine's noise
    assert out["ms"][3] * 2 < min(out["ms"][:3])


def test_independent_refuses_a_table_it_cannot_time(bench_lut, tmp_path):
    flops = build_cost_table("flops", "tiny").save(tmp_path / "flops.json")
    with pytest.raises(SystemExit, match="is not a CPU latency table"):
        bench_lut.main(["independent", "--lut_path", str(flops)])
    with pytest.raises(SystemExit, match="does not exist"):
        bench_lut.main(["independent", "--lut_path", str(tmp_path / "none.json")])
