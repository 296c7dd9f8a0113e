"""bench/bench_lut.py's figures that the README quotes: two tables compared with and without their
common speed factor, how alike repeated validations rank the same networks, and the allocator
comparison's fresh processes."""

import importlib.util
import json
import platform
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_lut():
    spec = importlib.util.spec_from_file_location("bench_lut", ROOT / "bench" / "bench_lut.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agree_separates_a_common_speed_factor_from_the_rest(bench_lut, tmp_path, capsys):
    table = json.loads((ROOT / "luts" / "fbnet_32_cpu.json").read_text())
    table["meta"]["probes"] = {"memory_ms": 7.0, "compute_ms": 0.5}
    a = tmp_path / "a.json"
    a.write_text(json.dumps(table))
    for entries in [*table["layers"], table["fixed"]]:
        for entry in entries.values():
            entry["median"] *= 0.9  # a machine 10% faster in every entry alike
    table["meta"]["probes"] = {"memory_ms": 6.3, "compute_ms": 0.5}
    faster = tmp_path / "b.json"
    faster.write_text(json.dumps(table))
    out = bench_lut.main(["agree", "--lut_a", str(a), "--lut_b", str(faster)])
    assert out["entry_median_diff_percent"] == pytest.approx(0.1 / 0.95 * 100, abs=0.01)
    assert out["prediction_median_diff_percent"] == pytest.approx(0.1 / 0.9 * 100, abs=0.01)
    assert out["b_over_a_median"] == pytest.approx(0.9)
    assert out["entry_median_diff_after_that_factor_percent"] == pytest.approx(0.0, abs=0.01)
    assert out["same_fastest_op_layers"] == "22/22"
    assert out["probe_memory_b_over_a"] == 0.9 and out["probe_compute_b_over_a"] == 1.0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out


def _report(
    path, measured, names=("a", "b", "c", "d"), all_rounds=None, date="2026-11-26T00:00:00+00:00"
):
    report = {
        "pearson_r": 0.99,
        "kendall_tau": 0.9,
        "mape_percent": 2.0,
        "max_ape_percent": 4.0,
        "num_archs": len(names),
        "validation": {"date": date, "all_rounds": all_rounds},
        "archs": [{"name": n, "measured": m} for n, m in zip(names, measured)],
    }
    path.write_text(json.dumps(report))
    return str(path)


def test_summarize_ranks_the_measurements_of_repeated_validations(bench_lut, tmp_path):
    # one swapped pair of six between the first two: tau 4/6; the third repeats the first: tau 1
    reports = [
        _report(tmp_path / "1.json", [1, 2, 3, 4]),
        _report(tmp_path / "2.json", [1, 3, 2, 4]),
        _report(tmp_path / "3.json", [10, 20, 30, 40]),
    ]
    out = bench_lut.main(["summarize", *reports])
    between = out["kendall_tau_between_measurements"]
    assert between["pairs"] == 3
    assert between["min"] == pytest.approx(4 / 6, abs=1e-4) and between["max"] == 1.0
    assert between["median"] == pytest.approx(4 / 6, abs=1e-4)
    # reports of other architectures are not compared
    other = _report(tmp_path / "4.json", [1, 2, 3, 4], names=("w", "x", "y", "z"))
    assert "kendall_tau_between_measurements" not in bench_lut.main(
        ["summarize", reports[0], other]
    )


def test_summarize_says_how_far_repeated_measurements_of_the_same_networks_differ(
    bench_lut, tmp_path
):
    a = [10.0, 20.0, 30.0, 40.0]
    reports = [
        _report(tmp_path / "1.json", a, date="2026-11-26T10:00:00+00:00"),
        # 2% slower in every network, five minutes later
        _report(tmp_path / "2.json", [v * 1.02 for v in a], date="2026-11-26T10:05:00+00:00"),
        # an hour later: 10% slower, and the last network 5% slower still
        _report(tmp_path / "3.json", [11.0, 22.0, 33.0, 46.2], date="2026-11-26T11:00:00+00:00"),
    ]
    out = bench_lut.main(["summarize", *reports])["latency_diff_between_measurements"]
    apart = [2 / 101 * 100, 10 / 105 * 100, 8 / 106 * 100]  # percent of the mean, per pair
    assert out["values"] == "measured" and out["pairs"] == 3
    assert out["median"] == pytest.approx(apart[2], abs=1e-3)
    assert out["min"] == pytest.approx(apart[0], abs=1e-3)
    assert out["max"] == pytest.approx(apart[1], abs=1e-3)
    assert out["share_within_3_percent"] == pytest.approx(1 / 3, abs=1e-3)
    # the common factor divided out, only the last network of the third report stays apart, and
    # the median over four networks is 0
    assert out["after_common_factor"] == {"median": 0.0, "min": 0.0, "max": 0.0}
    close = out["dated_within_10_min"]
    assert close["pairs"] == 1 and close["median"] == pytest.approx(apart[0], abs=1e-3)
    # reports of matched validations: their plain medians over every round are compared
    for path in reports:
        report = json.loads(Path(path).read_text())
        for arch in report["archs"]:
            arch["measured_all_rounds"], arch["measured"] = arch["measured"], 1.0
        Path(path).write_text(json.dumps(report))
    again = bench_lut.main(["summarize", *reports])["latency_diff_between_measurements"]
    assert again["values"] == "measured_all_rounds"
    assert again["median"] == pytest.approx(out["median"], abs=1e-3)


def test_agreement_of_pairs_with_a_common_factor_and_one_network_apart(bench_lut):
    import numpy as np

    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = a * 1.1
    b[-1] *= 1.5  # one network of five far apart: the median ignores it after the factor
    out = bench_lut._agreement([(a, b), (a, a)], within=5.0)
    assert out["max"] == pytest.approx(0.1 / 1.05 * 100, abs=1e-3) and out["min"] == 0.0
    assert out["share_within_5_percent"] == 0.5 and out["pairs"] == 2
    assert out["after_common_factor"]["max"] == pytest.approx(0.0, abs=1e-4)


def test_summarize_gives_the_all_round_figures_of_matched_validations(bench_lut, tmp_path):
    figures = [
        {"pearson_r": r, "kendall_tau": t, "mape_percent": m, "max_ape_percent": 2 * m}
        for r, t, m in ((0.98, 0.85, 3.0), (0.99, 0.95, 1.0), (0.97, 0.80, 5.0))
    ]
    reports = [
        _report(tmp_path / f"{i}.json", [1, 2, 3, 4], all_rounds=f) for i, f in enumerate(figures)
    ]
    reports.append(_report(tmp_path / "unmatched.json", [1, 2, 3, 4]))  # no all_rounds: left out
    out = bench_lut.main(["summarize", *reports])
    assert out["num_reports"] == 4 and out["all_rounds"]["num_reports"] == 3
    assert out["all_rounds"]["kendall_tau"] == {"median": 0.85, "min": 0.8, "max": 0.95}
    assert out["all_rounds"]["max_ape_percent"] == {"median": 6.0, "min": 2.0, "max": 10.0}
    assert out["kendall_tau"]["median"] == 0.9  # the headline figures, as reported


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_heap sets glibc's thresholds")
def test_allocator_bench_runs_each_setting_in_its_own_processes(bench_lut):
    argv = ["allocator", "--input_size", "32", "--num_archs", "2", "--threads", "1"]
    out = bench_lut.main([*argv, "--rounds", "1", "--processes", "1"])
    assert out["default"]["in_effect"] == ["default"]  # a fresh process each: nothing carried over
    assert out["keep_heap"]["in_effect"] == ["keep_heap"]
    for mode in ("default", "keep_heap"):
        assert len(out[mode]["faults_per_pass"]) == 1 and len(out[mode]["median_ms"]) == 2
        assert min(out[mode]["median_ms"]) > 0
    assert len(out["keep_heap_time_saved_percent"]) == 2


def test_drift_refuses_a_table_it_cannot_time(bench_lut):
    with pytest.raises(SystemExit, match="not a CPU latency table"):
        bench_lut.main(["drift", "--lut_path", str(ROOT / "luts" / "fbnet_32_flops.json")])


def test_window_spread_takes_the_median_of_every_run_in_a_row(bench_lut):
    import numpy as np

    out = bench_lut._window_spread(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 2)
    # medians 1.5, 2.5, 3.5, 4.5: population sd sqrt(1.25)
    assert out == {"windows": 4, "sd": 1.118, "min": 1.5, "max": 4.5}


def test_drift_measures_for_its_duration_and_splits_the_rounds_into_validations(
    bench_lut, tmp_path
):
    raw_path = tmp_path / "raw.json"
    table = json.loads((ROOT / "luts" / "fbnet_32_cpu.json").read_text())
    table["meta"]["probe_rounds"] = {"memory_ms": [7.0, 7.5], "compute_ms": [0.6, 0.7]}
    lut_path = tmp_path / "lut.json"
    lut_path.write_text(json.dumps(table))
    argv = ["drift", "--lut_path", str(lut_path), "--num_archs", "2"]
    argv += ["--threads", "1", "--duration_s", "2", "--val_rounds", "2", "--windows_s", "0.5"]
    argv += ["--build_s", "0.5"]
    # the table was built with glibc as it is: "default", unless this process already keeps its heap
    from supernet_functions.lookup_table_builder import use_allocator

    in_effect = use_allocator("default")  # changes nothing, says what is in effect
    out = bench_lut.main([*argv, "--raw_path", str(raw_path), "--progress", "false"])
    raw = json.loads(raw_path.read_text())
    rounds = len(raw["ms"])
    assert out["rounds"] == rounds >= 2 and out["allocator"] == in_effect
    assert out["duration_s"] >= 2 and raw["round_end_s"] == sorted(raw["round_end_s"])
    assert len(raw["names"]) == out["num_archs"] == len(raw["ms"][0]) > 2  # random + named
    assert min(min(row) for row in raw["ms"]) > 0
    assert len(raw["probes"]["compute_ms"]) == rounds
    # back-to-back validations of 2 rounds each, compared when there are at least two of them
    windows = out["validation_windows"].get("2", {}).get("windows", 0)
    assert windows == (rounds // 2 if rounds >= 4 else 0)
    if windows:  # and again with the rounds matched to the build's conditions
        median, worst = out["validation_windows"]["2"]["tau_vs_table_matched"]
        assert -1 <= worst <= median <= 1
    lo, p10, mid, p90, hi = out["round_level_percentiles_0_10_50_90_100"]
    assert lo <= p10 <= mid <= p90 <= hi
    window = out["level_by_window_s"]["0.5"]
    assert window["min"] <= window["max"] and window["windows"] >= 1
    # windows of a build's length that do not overlap, compared two by two
    import numpy as np

    round_s = np.median(np.diff(raw["round_end_s"], prepend=0.0))  # as drift takes it, unrounded
    length = max(1, round(0.5 / round_s))
    windows = rounds - length + 1
    pairs = sum(max(0, windows - i - length) for i in range(windows))
    assert out.get("build_windows", {}).get("pairs", 0) == pairs
    if pairs:
        build = out["build_windows"]
        assert build["rounds"] == length and 0 <= build["min"] <= build["median"] <= build["max"]
    # the recorded rounds analysed again, without timing anything: the same figures
    again = bench_lut.main([*argv, "--from_raw", str(raw_path)])
    assert again == out
    other = json.loads(raw_path.read_text())
    other["names"] = other["names"][::-1]
    raw_path.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="timed other networks"):
        bench_lut.main([*argv, "--from_raw", str(raw_path)])


def test_two_compute_states_are_split_where_the_probe_jumps(bench_lut):
    import numpy as np

    compute = np.array([0.70, 0.57, 0.71, 0.58, 0.99, 0.69, 0.56, 0.70, 0.57])
    fast = bench_lut._two_states(compute)
    assert fast.tolist() == (compute < 0.6).tolist()  # the outlier 0.99 stays with the slow state
    assert bench_lut._two_states(compute[:5]) is None  # too few rounds for two states of 3
