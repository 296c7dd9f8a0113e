"""The lookup table: file round trip, every kind of bad file refused with its own message, predictions
that match what a real network gives, and small measurements that run fast on CPU."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fbnet_building_blocks.arch_specs import ARCHS, ArchSpec
from fbnet_building_blocks.fbnet_builder import FBNet
from fbnet_building_blocks.search_space import CANDIDATE_OPS, get_search_space
from fbnet_building_blocks.summary import count_params, model_summary
from supernet_functions.lookup_table_builder import (
    LatencyLookupTable,
    LUTError,
    SpeedProbes,
    build_cost_table,
    build_lut,
    lut_key,
    measure_op_latency,
    network_parts,
    use_allocator,
)
from supernet_functions.lut_cli import main as lut_main
from supernet_functions.lut_validation import (
    build_network,
    compare,
    kendall_tau,
    named_archs,
    sample_archs,
    validate_lut,
)


@pytest.fixture(scope="module")
def tiny_lut():
    before = torch.get_num_threads()
    lut = build_lut("tiny", rounds=2, reps=1, warmup=0, threads=1, progress=False)
    lut.threads_around_build = (before, torch.get_num_threads())
    return lut


@pytest.fixture(scope="module")
def fbnet_flops():
    return build_cost_table("flops", "fbnet", input_size=32)


def _write(tmp_path, data, name="lut.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_key_is_stable():
    assert lut_key("ir_k3_e6", 16, 24, 2, 112) == "ir_k3_e6|16->24|s2|112"


def test_tiny_build_has_every_entry_and_positive_values(tiny_lut):
    space = get_search_space("tiny")
    assert tiny_lut.num_layers == space.num_layers
    for layer in tiny_lut.layers:
        assert set(layer) == set(space.candidate_ops)
        assert all(e["median"] > 0 and e["n"] == 2 for e in layer.values())
    assert set(tiny_lut.fixed) == {"stem", "head", "pool", "classifier"}
    assert tiny_lut.meta["unit"] == "ms" and tiny_lut.meta["threads"] == 1
    before, after = tiny_lut.threads_around_build
    assert after == before  # the build restored the caller's thread count
    # an identity skip costs far less than any conv block of the same layer
    assert tiny_lut.query(2, "skip") < tiny_lut.query(2, "ir_k5_e6")
    tiny_lut.check_compatible("tiny", 32, space.candidate_ops)


def test_json_round_trip(tiny_lut, tmp_path):
    path = tiny_lut.save(tmp_path / "t.json")
    loaded = LatencyLookupTable.load(path)
    assert loaded.to_dict() == json.loads(json.dumps(tiny_lut.to_dict()))
    ops = ["ir_k3_e1", "skip", "ir_k5_e6", "ir_k3_s2"]
    assert loaded.predict(ops) == pytest.approx(tiny_lut.predict(ops))
    vec = loaded.latency_vector(1, ["skip", "ir_k3_e1"])
    assert vec.dtype == torch.float32 and vec.tolist() == pytest.approx(
        [tiny_lut.query(1, "skip"), tiny_lut.query(1, "ir_k3_e1")]
    )
    assert loaded.path == path
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_missing_entry_names_op_layer_and_path(tiny_lut, tmp_path):
    loaded = LatencyLookupTable.load(tiny_lut.save(tmp_path / "t.json"))
    with pytest.raises(KeyError, match=r"ir_k7_e6.*layer 1.*t\.json"):
        loaded.query(1, "ir_k7_e6")


def _bad_files(good: dict):
    text = json.dumps(good, indent=1)

    def edited(fn):
        d = json.loads(text)
        fn(d)
        return d

    return {
        "missing": (None, "does not exist"),
        "empty": ("", "is empty"),
        "truncated": (text[: len(text) // 2], "is truncated"),
        "corrupt": (text.replace('"median":', '"median";', 1), "is corrupt"),
        "not_object": ("[1, 2]", "must hold a JSON object"),
        "no_layers": (edited(lambda d: d.pop("layers")), "missing its 'layers' section"),
        "missing_layers": (edited(lambda d: d["layers"].pop()), "layers are missing"),
        "unknown_op": (
            edited(lambda d: d["layers"][0].update(ir_k9_e9={"median": 1.0})),
            "unknown op 'ir_k9_e9'",
        ),
        "zero": (
            edited(lambda d: d["layers"][1]["skip"].update(median=0.0)),
            "'median' must be positive",
        ),
        "negative": (
            edited(lambda d: d["fixed"]["stem"].update(median=-1.0)),
            "'median' must be positive",
        ),
        "not_number": (
            edited(lambda d: d["layers"][0]["skip"].update(median="fast")),
            "'median' must be a number",
        ),
        "no_median": (
            edited(lambda d: d["layers"][0].update(skip={"iqr": 0.1})),
            "must be an object with a 'median'",
        ),
        "version": (edited(lambda d: d["meta"].update(format_version=99)), "format_version 99"),
        "bad_cost": (edited(lambda d: d["meta"].update(cost="energy")), "unknown cost 'energy'"),
        "probe_rounds_keys": (
            edited(lambda d: d["meta"]["probe_rounds"].pop("compute_ms")),
            "'probe_rounds' must be an object with exactly",
        ),
        "probe_rounds_value": (
            edited(lambda d: d["meta"]["probe_rounds"]["memory_ms"].__setitem__(0, -1.0)),
            r"probe_rounds\['memory_ms'\] holds -1.0, not a positive time",
        ),
        "probe_rounds_length": (
            edited(lambda d: d["meta"]["probe_rounds"]["compute_ms"].pop()),
            "the lists of 'probe_rounds' differ in length",
        ),
    }


BAD_KINDS = (
    "missing empty truncated corrupt not_object no_layers missing_layers unknown_op zero negative "
    "not_number no_median version bad_cost probe_rounds_keys probe_rounds_value probe_rounds_length"
).split()


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_is_refused_with_its_own_message(kind, tiny_lut, tmp_path):
    bad = _bad_files(tiny_lut.to_dict())
    assert set(bad) == set(BAD_KINDS)
    content, message = bad[kind]
    path = tmp_path / "bad.json" if content is None else _write(tmp_path, content)
    with pytest.raises(LUTError, match=message) as err:
        LatencyLookupTable.load(path)
    assert str(path) in str(err.value)


def test_nan_is_refused(tiny_lut, tmp_path):
    data = json.loads(json.dumps(tiny_lut.to_dict()))
    data["layers"][3]["ir_k3_e6"]["median"] = float("nan")
    text = json.dumps(data)  # writes NaN, which Python's json reads back
    assert "NaN" in text
    with pytest.raises(LUTError, match="not finite"):
        LatencyLookupTable.load(_write(tmp_path, text))


@pytest.mark.parametrize(
    "args, message",
    [
        (("fbnet", 32), "built for search space 'tiny', not 'fbnet'; .*has 4 layers.*fbnet.*22"),
        (("tiny", 64), "measured at input size 32, not 64"),
        (("tiny", 32, ["ir_k3_e1", "ir_k7_e6"]), r"layer 0 has no entry for ops \['ir_k7_e6'\]"),
        (("tiny", 32, None, 8), "measured at batch size 1, not 8"),
    ],
)
def test_incompatible_table_names_the_mismatch(args, message, tiny_lut):
    with pytest.raises(LUTError, match=message):
        tiny_lut.check_compatible(*args)


def test_changed_layer_shape_is_named(tiny_lut):
    lut = LatencyLookupTable(dict(tiny_lut.meta), tiny_lut.layers, tiny_lut.fixed)
    lut.meta["layer_shapes"] = [list(s) for s in tiny_lut.meta["layer_shapes"]]
    lut.meta["layer_shapes"][2][1] = 99
    with pytest.raises(LUTError, match="layer 2 has shape"):
        lut.check_compatible("tiny", 32)


def test_one_hot_sum_matches_hand_computed_value():
    lut = LatencyLookupTable.from_latencies(
        "tiny",
        [
            {op: 0.1 * (i + 1) + 0.01 * j for j, op in enumerate(("skip", "ir_k3_e1"))}
            for i in range(4)
        ],
        fixed_ms={"stem": 0.5, "head": 0.25},
    )
    one_hot = [torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])] * 2
    by_vectors = sum(
        float(w @ lut.latency_vector(i, ["skip", "ir_k3_e1"])) for i, w in enumerate(one_hot)
    )
    expected = 0.11 + 0.2 + 0.3 + 0.41 + 0.75
    assert by_vectors + lut.fixed_cost == pytest.approx(expected, rel=1e-6)
    assert lut.predict(["ir_k3_e1", "skip", "skip", "ir_k3_e1"]) == pytest.approx(expected)


def test_one_hot_sum_is_what_the_validation_predicts(tiny_lut):
    report = validate_lut(tiny_lut, num_archs=3, seed=2, rounds=1, reps=1, progress=False)
    ops = list(tiny_lut.layers[0])
    assert report["num_archs"] == 3 and report["cost"] == "latency"
    for arch in report["archs"]:
        one_hot = [
            torch.nn.functional.one_hot(torch.tensor(ops.index(o)), len(ops)) for o in arch["ops"]
        ]
        total = sum(
            float(w.float() @ tiny_lut.latency_vector(i, ops)) for i, w in enumerate(one_hot)
        )
        assert arch["predicted"] == pytest.approx(total + tiny_lut.fixed_cost, abs=1e-4)
        assert arch["measured"] > 0


def test_cli_prints_matched_and_all_round_figures(tiny_lut, tmp_path, capsys):
    path = tiny_lut.save(tmp_path / "t.json")  # a table that kept its per-round probes
    argv = ["--train_or_sample", "validate_lut", "--lut_path", str(path), "--num_archs", "3"]
    out = lut_main([*argv, "--val_rounds", "2", "--reps", "1", "--progress", "false"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert (
        out["rounds_measured"] >= 2
        and 0 < out["matched_effective_rounds"] <= out["rounds_measured"]
    )
    assert set(out["all_rounds"]) == {"pearson_r", "kendall_tau", "spearman_rho", "mape_percent"}
    report = json.loads(Path(out["report"]).read_text())
    assert len(report["raw"]["ms"]) == out["rounds_measured"]
    assert all("measured_all_rounds" in a for a in report["archs"])
    off = lut_main([*argv, "--val_rounds", "2", "--reps", "1", "--match_conditions", "false"])
    assert "all_rounds" not in off and "rounds_measured" not in off


def test_a_validation_without_rounds_is_refused(tiny_lut, tmp_path):
    with pytest.raises(ValueError, match="at least 1 measuring round, got 0"):
        validate_lut(tiny_lut, num_archs=3, rounds=0, progress=False)
    path = tmp_path / "t.json"
    tiny_lut.save(path)
    argv = ["--train_or_sample", "validate_lut", "--lut_path", str(path), "--val_rounds", "0"]
    with pytest.raises(SystemExit, match="error: --val_rounds must be at least 1, got 0"):
        lut_main(argv)
    with pytest.raises(ValueError, match=r"max_rounds \(5\) must be at least rounds \(10\)"):
        validate_lut(tiny_lut, num_archs=3, rounds=10, max_rounds=5, progress=False)
    argv[-1] = "10"
    with pytest.raises(SystemExit, match=r"--val_max_rounds \(5\) must be at least --val_rounds"):
        lut_main([*argv, "--val_max_rounds", "5"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_cuda_table_is_validated_on_cuda_or_refused_clearly(tiny_lut, tmp_path):
    cuda_table = LatencyLookupTable({**tiny_lut.meta, "device": "cuda"}, tiny_lut.layers)
    with pytest.raises(LUTError, match="measured on CUDA"):
        validate_lut(cuda_table, num_archs=3, progress=False)
    report = validate_lut(cuda_table, num_archs=3, device="cpu", rounds=1, reps=1, progress=False)
    assert report["validation"]["device"] == "cpu"  # asked for explicitly: compared anyway
    path = tmp_path / "cuda.json"
    cuda_table.save(path)
    with pytest.raises(SystemExit, match="error: the table .* measured on CUDA"):
        lut_main(["--train_or_sample", "validate_lut", "--lut_path", str(path), "--num_archs", "3"])


def test_flops_and_params_tables_match_whole_networks(fbnet_flops, tiny_lut):
    flops = build_cost_table("flops", "tiny")
    params = build_cost_table("params", "tiny")
    assert flops.meta["unit"] == "M multiply-adds" and params.meta["cost"] == "params"
    for spec in sample_archs(tiny_lut, 3, seed=5):
        model = build_network(flops, spec, torch.device("cpu"))  # real weights, real tensors
        assert flops.predict(spec.ops) == pytest.approx(model_summary(model, 32)["macs"] / 1e6)
        assert params.predict(spec.ops) == pytest.approx(count_params(model) / 1e6, rel=1e-6)
    model = build_network(fbnet_flops, ARCHS["fbnet_a"], torch.device("cpu"))
    macs = model_summary(model, 32)["macs"] / 1e6
    assert fbnet_flops.predict(ARCHS["fbnet_a"].ops) == pytest.approx(macs, rel=1e-6)
    # an identity skip has neither FLOPs nor parameters, and such a table still loads
    assert fbnet_flops.query(2, "skip") == 0.0 and params.query(2, "skip") == 0.0


def test_validation_of_flops_table_is_exact_and_reports_each_arch(fbnet_flops):
    report = validate_lut(fbnet_flops, num_archs=3, seed=1, progress=False)
    assert report["num_archs"] == 3 + len(named_archs(fbnet_flops))
    assert report["mape_percent"] < 1e-6 and report["kendall_tau"] == pytest.approx(1.0)
    for arch in report["archs"]:
        assert arch["predicted"] == pytest.approx(fbnet_flops.predict(arch["ops"]), rel=1e-6)


def test_sampling_is_seeded_and_uniform_over_the_table(tiny_lut):
    a, b = sample_archs(tiny_lut, 50, seed=3), sample_archs(tiny_lut, 50, seed=3)
    assert [s.ops for s in a] == [s.ops for s in b]
    assert {op for s in a for op in s.ops} == set(tiny_lut.layers[0])


def test_named_archs_fit_fbnet(fbnet_flops):
    names = {s.name for s in named_archs(fbnet_flops)}
    assert {"fbnet_a", "fbnet_b", "fbnet_c"} <= names and "fbnet_96_035_1" not in names


def test_compare_metrics():
    m = compare([1.0, 2.0, 3.3], [1.0, 2.0, 3.0])
    assert m["mape_percent"] == pytest.approx(10 / 3)
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert compare([3, 2, 1], [1, 2, 3])["kendall_tau"] == pytest.approx(-1.0)


def test_rank_statistics_by_hand():
    # one discordant pair of six: tau = (5 - 1) / 6; rank differences (0, 1, 1, 0): rho = 1 - 6*2/60
    m = compare([1, 2, 3, 4], [1, 3, 2, 4])
    assert m["kendall_tau"] == pytest.approx(4 / 6)
    assert m["spearman_rho"] == pytest.approx(0.8)
    # a tie in x: 5 concordant pairs, tau-b = 5 / sqrt(5 * 6); tied ranks are averaged (1.5, 1.5)
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / 30**0.5)
    rx, ry = np.array([1.5, 1.5, 3, 4]), np.arange(1, 5)
    rho = np.sum((rx - rx.mean()) * (ry - ry.mean())) / np.sqrt(
        np.sum((rx - rx.mean()) ** 2) * np.sum((ry - ry.mean()) ** 2)
    )
    assert compare([1, 1, 2, 3], [1, 2, 3, 4])["spearman_rho"] == pytest.approx(rho)


def test_parts_in_sequence_equal_the_network():
    space = get_search_space("tiny")
    spec = ArchSpec("t", ("ir_k3_e1", "skip", "ir_k5_s2", "ir_k3_e6"), "tiny")
    model = FBNet(spec, space, cnt_classes=10).eval()
    fixed, blocks = network_parts(model)
    x = torch.randn(2, 3, 32, 32)
    h = fixed["stem"](x)
    for block in blocks:
        h = block(h)
    h = fixed["classifier"](fixed["pool"](fixed["head"](h)))
    torch.testing.assert_close(h, model(x))


def test_measure_tiny_op_with_few_runs():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    result = measure_op_latency(conv, torch.randn(1, 4, 8, 8), threads=1, number=2)
    assert result["n"] == 2 and result["median"] > 0 and result["iqr"] >= 0
    assert not conv.training


def test_cli_builds_flops_table_and_validates(tmp_path, capsys):
    path = tmp_path / "flops.json"
    argv = ["--train_or_sample", "build_lut", "--cost", "flops", "--lut_path", str(path)]
    lut_main(argv + ["--search_space", "tiny", "--progress", "False"])
    lut = LatencyLookupTable.load(path)
    lut.check_compatible("tiny", 32)
    out = lut_main(
        ["--train_or_sample", "validate_lut", "--lut_path", str(path), "--num_archs", "4"]
        + ["--progress", "False"]
    )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == out and last["num_archs"] == 4
    assert {"pearson_r", "kendall_tau", "mape_percent"} <= set(last)
    assert (tmp_path / "flops.validation.json").is_file()
    assert (tmp_path / "flops.validation.png").stat().st_size > 1000


def test_cli_refuses_bad_table_clearly(tmp_path):
    path = _write(tmp_path, '{"meta": {"search_space": "tiny"')
    with pytest.raises(SystemExit, match="is truncated"):
        lut_main(["--train_or_sample", "validate_lut", "--lut_path", str(path)])


def test_committed_tables_load_and_fit_the_paper_search_space():
    from supernet_functions.lookup_table_builder import LUT_DIR

    tables = [p for p in LUT_DIR.glob("*.json") if "." not in p.stem]  # not *.validation_1 etc.
    assert {"fbnet_32_cpu.json", "fbnet_224_cpu.json", "fbnet_224_cuda.json"} <= {
        p.name for p in tables
    }
    for path in tables:
        lut = LatencyLookupTable.load(path)
        lut.check_compatible("fbnet", lut.meta["input_size"], CANDIDATE_OPS)
        assert lut.meta["cost"] in ("latency", "flops", "params"), path


def test_speed_probes_are_stored_with_the_table_and_compared_by_the_validation(tiny_lut):
    probes = tiny_lut.meta["probes"]  # one sample per timed round of the build
    assert probes["memory_ms"] > 0 and probes["compute_ms"] > 0
    lo, hi = probes["memory_ms_range"]
    assert lo <= probes["memory_ms"] <= hi
    report = validate_lut(tiny_lut, num_archs=3, rounds=2, reps=1, progress=False)
    v = report["validation"]
    assert v["probes"]["memory_ms"] > 0
    assert v["probe_memory_vs_build"] == pytest.approx(
        v["probes"]["memory_ms"] / probes["memory_ms"], rel=1e-2
    )
    assert "probe_compute_vs_build" in v
    # a table whose build saw a memory copy 100x faster: the validation flags the difference
    fast_build = {**probes, "memory_ms": probes["memory_ms"] / 100}
    odd = LatencyLookupTable({**tiny_lut.meta, "probes": fast_build}, tiny_lut.layers)
    flagged = validate_lut(odd, num_archs=3, rounds=1, reps=1, progress=False)["validation"]
    assert "probe_memory_vs_build" in flagged["conditions_differ"]


def test_build_keeps_the_probes_of_every_round(tiny_lut):
    rounds = tiny_lut.meta["probe_rounds"]
    assert len(rounds["memory_ms"]) == len(rounds["compute_ms"]) == tiny_lut.meta["rounds"]
    assert np.median(rounds["memory_ms"]) == pytest.approx(
        tiny_lut.meta["probes"]["memory_ms"], 1e-3
    )


def test_match_rounds_weighs_measured_rounds_by_the_reference_conditions_by_hand():
    from supernet_functions.lut_validation import match_rounds

    reference = [0.70, 0.57, 0.57, 0.90]  # compute probe of four build rounds
    measured = [0.57, 0.58, 0.71, 0.69, 0.56]
    weights, dist = match_rounds(reference, measured, tolerance=0.05)
    # 0.70 -> 0.71 and 0.69 (1/2 each); each 0.57 -> 0.57, 0.58, 0.56 (1/3 each); 0.90: nothing
    # within 5%, so all of it to the nearest, 0.71
    assert weights.tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 2 + 1, 1 / 2, 2 / 3])
    assert weights.sum() == pytest.approx(len(reference))
    assert dist.tolist() == pytest.approx([0.71 / 0.70 - 1, 0.0, 0.0, 0.90 / 0.71 - 1])


def test_weighted_percentiles_and_round_speed_by_hand():
    from supernet_functions.lookup_table_builder import round_speed, weighted_percentiles

    values = np.array([[4.0, 40.0], [1.0, 10.0], [3.0, 30.0], [2.0, 20.0]])  # [round, item]
    (median,) = weighted_percentiles(values, np.ones(4), [50])
    assert median.tolist() == [2.0, 20.0]  # the lower middle value
    q50, q75, q90 = weighted_percentiles(values, np.array([0.0, 3.0, 0.0, 1.0]), [50, 75, 90])
    assert q50.tolist() == [1.0, 10.0] and q75.tolist() == [1.0, 10.0] and q90.tolist() == [2, 20]
    with pytest.raises(ValueError, match="one non-negative weight per round"):
        weighted_percentiles(values, np.array([1.0, -1.0, 1.0, 1.0]), [50])
    times = np.array([[1.0, 2.0], [2.0, 4.0], [2.0, 4.0]])
    assert round_speed(times).tolist() == [0.5, 1.0, 1.0]  # typical round: the median (2, 4)
    assert round_speed(times, np.array([1.0, 0.0, 0.0])).tolist() == [1.0, 2.0, 2.0]


def _two_state_rounds(monkeypatch):
    """Fake measurements: two machine states in which three networks rank differently."""
    from supernet_functions import lut_validation

    state_a = np.array([10.0, 11.0, 12.0])  # compute-bound state: network 2 slowest
    state_b = np.array([9.0, 11.5, 10.5])  # memory-bound state: network 1 slowest
    is_a = np.array([1, 0, 0, 0, 1, 0, 0, 1], bool)  # mostly in state b
    ms = np.where(is_a[:, None], state_a, state_b)
    probes = SpeedProbes(torch.device("meta"))
    probes.enabled = True
    probes.samples = {
        "memory_ms": [7.0 if a else 7.8 for a in is_a],
        "compute_ms": [0.70 if a else 0.57 for a in is_a],
    }
    fake = lambda *args, **kwargs: (ms, np.arange(len(ms)), probes)  # noqa: E731
    monkeypatch.setattr(lut_validation, "measure_rounds", fake)
    return state_a, state_b


def test_validation_compares_with_the_rounds_in_the_builds_conditions(monkeypatch):
    from supernet_functions.lut_validation import measure_latencies

    state_a, state_b = _two_state_rounds(monkeypatch)
    reference = {"memory_ms": [7.05] * 5, "compute_ms": [0.69] * 5}  # a build made in state a
    # round scaling off: the states differ in more than a common speed factor
    med, iqr, info = measure_latencies([], None, normalize_rounds=False, reference=reference)
    assert med.tolist() == state_a.tolist() and iqr.tolist() == [0, 0, 0]
    assert info["all_rounds_ms"].tolist() == state_b.tolist()  # most rounds were in state b
    matched = info["matched"]
    assert matched["rounds_used"] == 3 and matched["reference_rounds"] == 5
    assert matched["effective_rounds"] == 3.0 and matched["reference_rounds_without_match"] == 0
    assert len(info["raw"]["ms"]) == 8 and info["raw"]["probes"]["compute_ms"][0] == 0.70
    med, _, info = measure_latencies([], None, normalize_rounds=False)  # nothing to match
    assert med.tolist() == state_b.tolist() and "matched" not in info


def test_validation_report_gives_matched_and_all_round_figures(tiny_lut, monkeypatch, caplog):
    state_a, state_b = _two_state_rounds(monkeypatch)
    # every op costs 1 ms but ir_k3_e1 2 ms: architecture i (i layers of ir_k3_e1) is predicted 4 + i
    layers = [
        {op: {"median": 2.0 if op == "ir_k3_e1" else 1.0} for op in d} for d in tiny_lut.layers
    ]
    meta = {**tiny_lut.meta, "probe_rounds": {"memory_ms": [7.0] * 4, "compute_ms": [0.7] * 4}}
    lut = LatencyLookupTable(meta, layers, {})
    specs = [
        ArchSpec(f"random_{i}", ("skip",) * (4 - i) + ("ir_k3_e1",) * i, "tiny") for i in range(3)
    ]
    monkeypatch.setattr("supernet_functions.lut_validation.sample_archs", lambda *a: specs)
    kwargs = dict(num_archs=3, include_named=False, normalize_rounds=False, progress=False)
    report = validate_lut(lut, **kwargs)
    v = report["validation"]
    assert [a["predicted"] for a in report["archs"]] == [4.0, 5.0, 6.0]
    assert v["match_conditions"] and report["kendall_tau"] == pytest.approx(1.0)
    assert v["all_rounds"]["kendall_tau"] == pytest.approx(
        kendall_tau([4, 5, 6], state_b), abs=1e-4
    )
    assert v["all_rounds"]["kendall_tau"] < 0.5
    assert [a["measured"] for a in report["archs"]] == state_a.tolist()
    assert [a["measured_all_rounds"] for a in report["archs"]] == state_b.tolist()
    off = validate_lut(lut, match_conditions=False, **kwargs)
    assert not off["validation"]["match_conditions"] and "all_rounds" not in off["validation"]
    assert [a["measured"] for a in off["archs"]] == state_b.tolist()
    # a build in a state the validation never saw: said, not hidden
    lut.meta["probe_rounds"] = {"memory_ms": [7.0] * 4, "compute_ms": [5.0] * 4}
    with caplog.at_level("WARNING"):
        unmatched = validate_lut(lut, **kwargs)["validation"]["matched"]
    assert unmatched["reference_rounds_without_match"] == 4
    assert "4 of the build's 4 rounds ran in conditions that no validation round met" in caplog.text


def test_speed_probes_time_real_work_and_skip_cuda():
    probes = SpeedProbes(torch.device("cpu"))
    first = probes.measure()
    assert set(first) == {"memory_ms", "compute_ms"} and min(first.values()) > 0
    probes.measure()
    assert len(probes.samples["memory_ms"]) == 2
    assert torch.equal(probes.dst, probes.src)  # the copy really ran
    assert SpeedProbes(torch.device("meta")).measure() == {}


_FAULTS_SCRIPT = """
import json, resource, torch
from fbnet_building_blocks.registry import build_block
from supernet_functions.lookup_table_builder import use_allocator

torch.set_num_threads(1)
block = build_block("ir_k3_e6", 16, 24, 2).eval()  # expands to 96 x 112 x 112: 4.8 MB blocks
x = torch.randn(1, 16, 112, 112)


def faults_per_pass():
    with torch.inference_mode():
        for _ in range(3):
            block(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            block(x)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5


default = faults_per_pass()
setting = use_allocator("keep_heap")
print(json.dumps({"default": default, "setting": setting, "keep_heap": faults_per_pass()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_heap sets glibc's thresholds")
def test_keep_heap_takes_page_faults_out_of_a_pass():
    # a fresh process: the setting cannot be undone, and the test process may already have it
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT], cwd=root, capture_output=True, text=True, check=True
    )
    faults = json.loads(out.stdout.strip().splitlines()[-1])
    assert faults["setting"] == "keep_heap"
    assert faults["default"] > 1000  # every 4.8 MB activation mapped and faulted in again
    assert faults["keep_heap"] < faults["default"] / 20


def test_table_records_its_allocator_and_validation_follows_it(tiny_lut, caplog):
    expected = "keep_heap" if platform.libc_ver()[0] == "glibc" else "default"
    assert tiny_lut.meta["allocator"] == expected
    report = validate_lut(tiny_lut, num_archs=3, rounds=1, reps=1, progress=False)
    assert report["validation"]["allocator"] == expected
    assert report["lut_meta"]["allocator"] == expected
    # a table from before the setting existed was measured with glibc as it is: told, not hidden
    old_meta = {k: v for k, v in tiny_lut.meta.items() if k != "allocator"}
    old = LatencyLookupTable(old_meta, tiny_lut.layers, tiny_lut.fixed)
    with caplog.at_level("WARNING"):
        validate_lut(old, num_archs=3, rounds=1, reps=1, progress=False)
    if expected == "keep_heap":
        assert "a table measured with default" in caplog.text
    with pytest.raises(ValueError, match="unknown allocator 'tcmalloc'"):
        use_allocator("tcmalloc")


def test_measure_rounds_by_count_and_by_duration():
    from supernet_functions.lut_validation import measure_rounds

    models = [torch.nn.Conv2d(3, c, 3).eval() for c in (4, 32)]
    x = torch.randn(1, 3, 16, 16)
    ms, ends, probes = measure_rounds(models, x, rounds=3, reps=2, progress=False)
    assert ms.shape == (3, 2) and (ms > 0).all()
    assert list(ends) == sorted(ends) and len(probes.samples["compute_ms"]) == 3
    ms, ends, _ = measure_rounds(models, x, duration_s=0.3, progress=False)
    assert ends[-1] >= 0.3 and ends[-2] < 0.3 and len(ms) == len(ends)
    # past `rounds` while more() asks for it, up to max_rounds
    ms, _, _ = measure_rounds(models, x, 2, 1, more=lambda p: True, max_rounds=5, progress=False)
    assert len(ms) == 5
    three = lambda p: len(p.samples["compute_ms"]) < 3  # noqa: E731
    ms, _, _ = measure_rounds(models, x, 2, 1, more=three, max_rounds=5, progress=False)
    assert len(ms) == 3


def test_a_validation_goes_on_until_it_has_rounds_in_the_builds_conditions():
    from supernet_functions.lut_validation import measure_latencies

    models = [torch.nn.Conv2d(3, c, 3).eval() for c in (4, 32)]
    x = torch.randn(1, 3, 16, 16)
    # a build whose compute probe took 100 ms: no round here comes near it, the nearest takes all
    reference = {"memory_ms": [1.0] * 10, "compute_ms": [100.0] * 10}
    # 3 rounds, and more while they are worth fewer than 3 / 2 rounds of the build's conditions
    _, _, info = measure_latencies(
        models, x, 3, 1, progress=False, reference=reference, max_rounds=5
    )
    assert info["rounds_measured"] == 5 and len(info["raw"]["ms"]) == 5
    matched = info["matched"]
    assert matched["effective_rounds"] == 1.0 and matched["reference_rounds_without_match"] == 10
    _, _, info = measure_latencies(models, x, 3, 1, progress=False, max_rounds=5)  # no reference
    assert info["rounds_measured"] == 3 and "matched" not in info
