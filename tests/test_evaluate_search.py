"""The search-vs-random evaluation: statistics against hand-computed values, the verdict rule condition by
condition, the heuristic against brute force, refusals, and end to end on two tiny searches (resumed)."""

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fbnet_building_blocks.search_space import CANDIDATE_OPS
from general_functions.checkpoint import save_checkpoint
from general_functions.config_utils import config_from_dict
from supernet_functions.config_for_supernet import PRESETS, SupernetConfig
from supernet_functions.experiments.evaluate_search import main
from supernet_functions.experiments.evaluation_figure import place_labels, recipe_differences
from supernet_functions.experiments.evaluation_stats import anova, network_stats, verdict
from supernet_functions.experiments.heuristic_arch import most_params_within_latency
from supernet_functions.latency.table import LatencyLookupTable
from supernet_functions.latency.validate import compare
from supernet_functions.training_functions_supernet import run as search

pytestmark = pytest.mark.usefixtures("one_thread")
OPS = list(CANDIDATE_OPS)
KEYS = {"name", "kind", "ops", "predicted_latency_ms", "measured_latency_ms", "seed", "top1"}
# not the trainer's default structure, so that passing it on is tested
STRUCTURE = {"dw_bn_relu": True, "head": "conv_bn_relu", "head_channels": 24}
TARGET_MS = 1.0  # below the cheapest network of the table below (1.7 ms): warned about, not refused


def _tiny_table() -> LatencyLookupTable:
    """The 4-layer space: layer i, op j costs 0.2 + 0.1 * i + 0.03 * j ms; stem + head 0.3 ms."""
    rows = [{op: 0.2 + 0.1 * i + 0.03 * j for j, op in enumerate(OPS)} for i in range(4)]
    meta = {"input_size": 32, "batch_size": 1, "cnt_classes": 10, "structure": STRUCTURE}
    return LatencyLookupTable.from_latencies("tiny", rows, {"stem": 0.1, "head": 0.2}, **meta)


@pytest.fixture(scope="module")
def search_runs(tmp_path_factory) -> list[Path]:
    """Two search seeds of one target: the smoke preset on a hand-made table (no timing)."""
    tmp = tmp_path_factory.mktemp("searches")
    lut_path = tmp / "tiny_lut.json"
    lut_path.write_text(json.dumps(_tiny_table().to_dict()))
    runs = []
    for seed in (0, 1):
        values = {
            **PRESETS["smoke"],
            **STRUCTURE,
            "fake_train_size": 20,
            "batch_size": 10,
            "epochs": 2,
        }
        values.update(lut_path=str(lut_path), log_dir=str(tmp), run_name=f"s{seed}", seed=seed)
        values.update(target_latency_ms=TARGET_MS, save_checkpoints=False, progress=False)
        runs.append(Path(search(config_from_dict(SupernetConfig, values))["run_dir"]))
    return runs


def _argv(runs, out, *extra) -> list[str]:
    argv = ["--runs", *map(str, runs), "--out", str(out), "--proxy", "test", "--num_random", "2"]
    return [*argv, "--rounds", "2", "--progress", "false", *extra]


@pytest.fixture(scope="module")
def proxy_check(search_runs, tmp_path_factory):
    """--check_proxy: the random networks alone, then stop (the evaluation below goes on from it)."""
    out = tmp_path_factory.mktemp("eval") / "t1"
    check = main(_argv(search_runs, out, "--check_proxy"))
    return out, check, sorted(p.name for p in (out / "runs").iterdir())


@pytest.fixture(scope="module")
def evaluation(proxy_check, search_runs):
    out = proxy_check[0]
    return out, main(_argv(search_runs, out))


def _rec(name, kind, top1, ms, seed=0):
    return {
        "name": name,
        "kind": kind,
        "ops": [],
        "predicted_latency_ms": ms,
        "measured_latency_ms": ms,
        "seed": seed,
        "top1": top1,
    }


def test_f_statistic_and_the_margin_against_hand_computed_values():
    # means 2, 5, 8 (grand 5): MS_between = 2 * (9 + 0 + 9) / 2 = 18; MS_within = 6 * 1 / 3 = 2
    f = anova([[1, 3], [4, 6], [7, 9]])
    assert f["f"] == 9.0 and (f["df_between"], f["df_within"]) == (2, 3)
    assert f["f_crit"] == pytest.approx(9.5521, abs=1e-4)  # F(2, 3) 95% quantile, printed tables
    assert not f["rankable"]  # 9 <= 9.55
    assert anova([[1, 3], [5, 7], [9, 11]])["rankable"]  # F = 32 / 2 = 16
    assert anova([[1, 1], [1, 1]])["f"] is None and not anova([[1, 1], [1, 1]])["rankable"]
    assert anova([[1, 1], [2, 2]])["rankable"]  # no seed noise at all: F is infinite
    with pytest.raises(ValueError, match="at least 2 seeds"):
        anova([[1], [2], [3]])

    # searched 50, 52, 54, 56: mean 53, s_s^2 = 20 / 3, n_s = 4; random means 40, 42, 44: s_r = 2
    records = [
        _rec(f"searched_{i // 2 + 1}", "searched", top1, 5.0, i % 2)
        for i, top1 in enumerate([50, 52, 54, 56])
    ]
    for name, mean in (("random_1", 40), ("random_2", 42), ("random_3", 44)):
        records += [_rec(name, "random", mean - 1, 5.0), _rec(name, "random", mean + 1, 5.0, 1)]
    records.append(_rec("heuristic", "heuristic", 53.0, 5.0))
    result = verdict(records, None, 5.0, {"rankable": True})
    # 2 * sqrt(20 / 3 / 4 + 4 / 3) = 2 * sqrt(3)
    assert result["margin"] == pytest.approx(2 * 3**0.5, abs=1e-4)
    assert result["searched_top1_mean"] == 53.0 and result["random_top1_mean"] == 42.0
    assert result["conditions"]["beats_random"]["value"] == 11.0
    assert result["conditions"]["on_target"]["passed"] is None and result["verdict"] == "met"


def _passing_records():
    """Searched 60-61.5% at 5.0 ms; random networks 50-54%; heuristic 60.5%; FBNet-A 70% at 8 ms."""
    records = [
        _rec("searched_1", "searched", 60.0, 5.0),
        _rec("searched_1", "searched", 61.0, 5.0, 1),
        _rec("searched_2", "searched", 60.5, 5.0),
        _rec("searched_2", "searched", 61.5, 5.0, 1),
    ]
    for i, mean in enumerate((50.0, 52.0, 54.0), 1):
        records += [_rec(f"random_{i}", "random", mean - 0.5, 5.1 + 0.1 * i)]
        records += [_rec(f"random_{i}", "random", mean + 0.5, 5.1 + 0.1 * i, 1)]
    records += [
        _rec("heuristic", "heuristic", 60.2, 5.05),
        _rec("heuristic", "heuristic", 60.8, 5.05, 1),
    ]
    return records + [_rec("fbnet_a", "named", 70.0, 8.0)]


def test_each_condition_of_the_rule_flips_the_verdict():
    rank = {"rankable": True}
    assert verdict(_passing_records(), 5.2, 10.0, rank)["verdict"] == "met"

    def failed(records=None, target=5.2, mape=10.0, ranking=rank):
        result = verdict(records or _passing_records(), target, mape, ranking)
        return result["verdict"], result["failed"]

    # beats_random: the random networks as good as the searched ones
    close = [
        dict(r, top1=r["top1"] + 8) if r["kind"] == "random" else r for r in _passing_records()
    ]
    assert failed(close) == ("not met: beats_random", ["beats_random"])
    # not_below_heuristic: the searched mean is 60.75; the heuristic may reach 61.25, not 61.35
    for top1, verdict_text in ((61.25, "met"), (61.35, "not met: not_below_heuristic")):
        records = [
            dict(r, top1=top1) if r["kind"] == "heuristic" else r for r in _passing_records()
        ]
        assert failed(records)[0] == verdict_text
    # not_dominated: one network faster (4.9 ms) and more accurate (62%)
    faster = [*_passing_records(), _rec("random_4", "random", 62.0, 4.9)]
    faster.append(_rec("random_4", "random", 62.0, 4.9, 1))
    assert failed(faster) == ("not met: not_dominated", ["not_dominated"])
    assert verdict(faster, 5.2, 10.0, rank)["conditions"]["not_dominated"]["value"] == ["random_4"]
    # on_target: 5.0 ms measured is within 10% of 5.5 (-9.1%), not of 5.6 (-10.7%); no target: skipped
    assert failed(target=5.5)[0] == "met" and failed(target=5.6)[1] == ["on_target"]
    assert failed(target=None)[0] == "met"
    # table_accurate: MAPE 15% passes, 15.1% does not
    assert failed(mape=15.0)[0] == "met" and failed(mape=15.1)[1] == ["table_accurate"]
    # a proxy that cannot rank, or a synthetic one, decides before the conditions
    assert failed(close, ranking={"rankable": False})[0] == "not measurable"
    result = verdict(close, 5.2, 10.0, rank, synthetic=True)
    assert result["verdict"] == "synthetic: no verdict" and result["failed"] == ["beats_random"]


def test_the_heuristic_is_the_most_parameters_within_the_budget_by_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(3):
        lat = rng.uniform(0.1, 1.0, (4, len(OPS)))
        par = rng.uniform(0.0, 2.0, (4, len(OPS))) + (lat if trial == 0 else 0)  # correlated once
        lut = LatencyLookupTable.from_latencies(
            "tiny", [dict(zip(OPS, row)) for row in lat], {"stem": 0.3}
        )
        params = LatencyLookupTable.from_latencies(
            "tiny", [dict(zip(OPS, row)) for row in par], {"stem": 0.01}, cost="params"
        )
        every = np.array(list(itertools.product(range(len(OPS)), repeat=4)))
        total_lat = lat[np.arange(4), every].sum(axis=1) + 0.3
        total_par = par[np.arange(4), every].sum(axis=1) + 0.01
        for budget in np.quantile(total_lat, [0.001, 0.1, 0.5, 0.9, 1.0]):
            ops, ms, m = most_params_within_latency(lut, params, OPS, budget)
            inside = total_lat <= budget
            assert ms <= budget + 1e-9 and m == pytest.approx(total_par[inside].max())
            assert [OPS.index(op) for op in ops] in every[inside].tolist()
    with pytest.raises(ValueError, match="cheapest costs"):
        most_params_within_latency(lut, params, OPS, total_lat.min() - 0.01)


def test_runs_of_another_target_table_or_structure_are_refused_with_one_line(
    search_runs, tmp_path, capsys
):
    def refused(*runs) -> str:
        with pytest.raises(SystemExit) as done:
            main(_argv(runs, tmp_path / "out"))
        assert not (tmp_path / "out").exists()  # nothing written, nothing trained
        message = str(done.value.code)
        assert message.startswith("error: ") and "\n" not in message
        return message

    def variant(name, file, edit) -> Path:
        copy = tmp_path / name
        shutil.copytree(search_runs[1], copy)
        data = json.loads((copy / file).read_text())
        edit(data)
        (copy / file).write_text(json.dumps(data))
        return copy

    other_target = variant("target", "config.json", lambda c: c.update(target_latency_ms=2.0))
    assert "differ in target_latency_ms (1 vs 2)" in refused(search_runs[0], other_target)
    other_table = variant("table", "lut.json", lambda t: t["layers"][0]["skip"].update(median=9.9))
    assert "differ in their lut.json (another table)" in refused(search_runs[0], other_table)
    other_block = variant("block", "config.json", lambda c: c.update(dw_bn_relu=False))
    message = refused(search_runs[0], other_block)
    assert (
        "priced BN + ReLU after the depthwise conv" in message and "not this run's table" in message
    )
    other_size = variant("size", "lut.json", lambda t: t["meta"].update(input_size=64))
    assert "measured at input size 64" in refused(other_size)
    no_config = tmp_path / "no_config"
    shutil.copytree(search_runs[0], no_config)
    (no_config / "config.json").unlink()
    assert "is not a search run folder: it has no config.json" in refused(no_config)
    for argv, expected in (
        (["--run", str(no_config), "--out", str(tmp_path / "out")], "it has no config.json"),
        (["--run", str(search_runs[0]), "--runs", str(search_runs[1])], "not both"),
        (["--runs", str(search_runs[0]), "--seeds", "0"], "at least 2 distinct --seeds"),
        (["--figure", str(tmp_path)], "has no summary.json"),
    ):
        with pytest.raises(SystemExit, match=expected):
            main(argv)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--runs", "--run", "--num_random", "--window", "--epochs", "--lr", "--figure"):
        assert flag in help_text


def test_evaluation_end_to_end_then_resumed(evaluation, proxy_check, search_runs, capsys):
    out, summary = evaluation
    lut = LatencyLookupTable.load(search_runs[0] / "lut.json")
    records, nets = summary["records"], summary["networks"]
    assert all(set(r) == KEYS for r in records)
    assert [(r["name"], r["seed"]) for r in records] == [
        (name, seed)
        for name in ("searched_1", "searched_2", "random_1", "random_2", "heuristic")
        for seed in (0, 1)
    ]  # no named network fits the 4-layer table
    argmaxes = [json.loads((run / "thetas.json").read_text())["argmax_ops"] for run in search_runs]
    assert [r["ops"] for r in records[:4:2]] == argmaxes
    centre = np.mean([lut.predict(ops) for ops in argmaxes])
    assert summary["centre_ms"] == pytest.approx(centre, abs=1e-4)
    for r in records:
        assert r["predicted_latency_ms"] == pytest.approx(lut.predict(r["ops"]), abs=1e-4)
        assert r["measured_latency_ms"] > 0 and 0 <= r["top1"] <= 100
        if r["kind"] == "random":
            assert abs(r["predicted_latency_ms"] / centre - 1) <= 0.05 and r["ops"] not in argmaxes
    assert records[-1]["predicted_latency_ms"] <= centre + 1e-9  # the heuristic fits the centre
    # one training per distinct (ops, seed), each with the table's structure and the recipe
    trainings = {(tuple(r["ops"]), r["seed"]) for r in records}
    folders = sorted((out / "runs").iterdir())
    assert len(folders) == len(trainings)
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        assert {k: config[k] for k in STRUCTURE} == STRUCTURE
        assert config["epochs"] == 2 and config["dataset"] == "fake"
        assert torch.load(folder / "last.pth", weights_only=True)["epoch"] == 2
    # the summary: its statistics recomputed from its own records
    assert summary["target_latency_ms"] == TARGET_MS and summary["recipe"]["epochs"] == 2
    assert summary["structure"] == STRUCTURE
    stats = network_stats(records)
    assert [{k: n[k] for k in s} for n, s in zip(nets, stats)] == stats
    assert [n.get("run") for n in nets[:3]] == [str(search_runs[0]), str(search_runs[1]), None]
    assert all(n["params_m"] > 0 for n in nets)
    random_top1 = [[r["top1"] for r in records if r["name"] == f"random_{i}"] for i in (1, 2)]
    assert summary["anova"] == anova(random_top1) and summary["anova"]["df_within"] == 2
    error = compare(
        [n["predicted_latency_ms"] for n in nets], [n["measured_latency_ms"] for n in nets]
    )
    assert summary["table_error"]["mape_percent"] == pytest.approx(error["mape_percent"], abs=1e-3)
    assert summary["verdict"]["verdict"] == "synthetic: no verdict"
    assert summary["verdict"] == verdict(
        records, TARGET_MS, summary["table_error"]["mape_percent"], summary["anova"], True
    )
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "pictures" / "search_vs_random.png").stat().st_size > 5000
    log = (out / "log.txt").read_text()
    assert "below the cheapest network of the table (1.7 ms)" in log
    assert f"{len(trainings)} of {len(trainings)} trainings" in log
    assert ("the proxy cannot rank these networks" in log) == (not summary["anova"]["rankable"])
    # --check_proxy trained the random networks only, its F test that of the finished evaluation,
    # and the evaluation took those trainings over
    _, check, folders_then = proxy_check
    assert folders_then == [f"random_{i}_seed{s}" for i in (1, 2) for s in (0, 1)]
    assert check["anova"] == summary["anova"] and check["recipe"] == summary["recipe"]
    assert json.loads((out / "proxy_check.json").read_text()) == check
    assert log.count("random_1 seed 0: done") == 1 and log.count("random_1 seed 0: training") == 1

    # interrupted: one training stopped after its first epoch, one killed before its first checkpoint
    last = out / "runs" / "random_2_seed1" / "last.pth"
    ckpt = torch.load(last, weights_only=True)
    ckpt["epoch"] = 1  # written as a run writes it: its checksum sidecar must agree
    save_checkpoint(last, {k: v for k, v in ckpt.items() if k != "format_version"})
    for file in ("last.pth", "result.json"):
        (out / "runs" / "heuristic_seed0" / file).unlink()
    capsys.readouterr()
    again = main(_argv(search_runs, out))
    err = capsys.readouterr().err
    assert err.count(": done (") == len(trainings) - 2
    assert "random_2 seed 1: resuming" in err and "heuristic seed 0: training" in err
    assert torch.load(last, weights_only=True)["epoch"] == 2
    kept = [r["top1"] for r in records if r["name"] not in ("random_2", "heuristic")]
    assert [
        r["top1"] for r in again["records"] if r["name"] not in ("random_2", "heuristic")
    ] == kept
    with pytest.raises(SystemExit, match="other settings"):  # the plan is fixed
        main(_argv(search_runs, out, "--window", "0.1"))
    with pytest.raises(SystemExit, match="other runs"):
        main(_argv(search_runs[:1], out))

    # copied without checkpoints (as SAVED_LOGS keeps an evaluation): result.json sums it up again
    for folder in (out / "runs").iterdir():
        result = json.loads((folder / "result.json").read_text())
        ckpt = torch.load(folder / "last.pth", weights_only=True)
        assert result["epoch"] == 2 and result["classes"] == 10
        assert result["last_metrics"]["test/top1"] == pytest.approx(
            ckpt["last_metrics"]["test/top1"]
        )
        for file in folder.glob("last.pth*"):
            file.unlink()
    capsys.readouterr()
    bare = main(_argv(search_runs, out))
    err = capsys.readouterr().err
    assert err.count(": done (") == len(trainings) and ": training" not in err
    assert f"{len(trainings)} of {len(trainings)} networks have no checkpoint" in err
    assert [r["top1"] for r in bare["records"]] == [r["top1"] for r in again["records"]]
    assert all(r["measured_latency_ms"] > 0 for r in bare["records"])
    (out / "runs" / "heuristic_seed0" / "result.json").write_text('{"epoch": 2}')
    with pytest.raises(SystemExit, match="heuristic_seed0/result.json is not a training result"):
        main(_argv(search_runs, out))


def test_the_figure_draws_several_targets_with_labels_that_do_not_overlap(evaluation, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, summary = evaluation
    second = tmp_path / "t2"  # a second target: the same networks, slower and less accurate
    second.mkdir()
    shifted = [
        dict(n, measured_latency_ms=n["measured_latency_ms"] * 2, top1_mean=n["top1_mean"] - 3)
        for n in summary["networks"]
    ]
    (second / "summary.json").write_text(
        json.dumps({**summary, "networks": shifted, "target_latency_ms": 2.0})
    )
    path = tmp_path / "pictures" / "both.png"
    assert main(["--figure", str(out), str(second), "--figure_path", str(path)]) == path
    assert path.stat().st_size > 5000
    assert recipe_differences([summary, summary]) == ["", ""]  # one recipe: one front

    third = tmp_path / "t3"  # another proxy recipe: named in the legend, its own front
    third.mkdir()
    recipe = {**summary["recipe"], "lr": 0.025}
    (third / "summary.json").write_text(json.dumps({**summary, "recipe": recipe}))
    assert recipe_differences([summary, {**summary, "recipe": recipe}]) == [
        f"lr {summary['recipe']['lr']}",
        "lr 0.025",
    ]
    drawn = tmp_path / "pictures" / "two_proxies.png"
    assert main(["--figure", str(out), str(third), "--figure_path", str(drawn)]) == drawn

    fig, ax = plt.subplots()
    ax.set(xlim=(0.9, 1.1), ylim=(49, 51))
    points = [(1.0, 50.0), (1.001, 50.02), (1.002, 49.98), (1.0, 50.01)]  # four on one spot
    labels = place_labels(ax, points, ["searched_1", "searched_2", "fbnet_a", "fbnet_b"])
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert all(box.width > 20 for box in boxes)  # drawn: an undrawn label measures 1 x 1
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    plt.close(fig)


def test_an_interrupted_evaluation_ends_in_one_line_that_says_how_to_continue(
    tmp_path, monkeypatch, capsys
):
    import signal

    import supernet_functions.experiments.evaluate_search as evaluation
    from general_functions.interrupts import Interrupted

    def stopped(args):  # what a training raises on Ctrl-C (its message names its own --resume)
        raise Interrupted(signal.SIGINT, 7, "train", "interrupted at epoch 2 step 7 (train); ...")

    monkeypatch.setattr(evaluation, "evaluate", stopped)
    with pytest.raises(SystemExit) as done:
        main(["--runs", str(tmp_path / "search"), "--out", str(tmp_path / "out")])
    assert done.value.code == 130
    assert capsys.readouterr().err == (
        "interrupted by SIGINT: run the same command again to continue (finished trainings are "
        "kept; the one cut off resumes from its last epoch)\n"
    )
