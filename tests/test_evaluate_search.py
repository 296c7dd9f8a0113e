"""The search-vs-random evaluation end to end on synthetic data: plan, resume, summary, verdict."""

import json
from pathlib import Path

import pytest
import torch

from supernet_functions.evaluate_search import main, verdict
from supernet_functions.sampling import load_table, sample_ops

pytestmark = pytest.mark.usefixtures("one_thread")
LUT = Path(__file__).resolve().parent.parent / "luts" / "fbnet_32_cpu.json"
KEYS = {"name", "kind", "ops", "predicted_latency_ms", "measured_latency_ms", "seed", "top1"}


def _fake_run(tmp_path) -> Path:
    """A search run folder as the search writes it (thetas.json, lut.json) with seeded thetas."""
    run = tmp_path / "search_run"
    run.mkdir()
    lut = load_table(LUT)
    ops = lut.meta["candidate_ops"]
    thetas = torch.randn(22, len(ops), generator=torch.Generator().manual_seed(0))
    state = {"epoch": 3, "search_space": "fbnet", "input_size": 32, "candidate_ops": ops}
    state.update(thetas=thetas.tolist(), argmax_ops=sample_ops(thetas, ops, "argmax"))
    state.update(lut_path=str(LUT), lut_device="cpu")
    (run / "thetas.json").write_text(json.dumps(state))
    lut.save(run / "lut.json")
    return run


def test_evaluation_end_to_end_resumes_and_writes_the_summary(tmp_path, capsys):
    run, out = _fake_run(tmp_path), tmp_path / "eval"
    argv = ["--run", str(run), "--out", str(out), "--proxy", "test", "--num_random", "2"]
    argv += ["--rounds", "2", "--progress", "false"]
    summary = main(argv)
    lut = load_table(run / "lut.json")
    records = summary["records"]
    assert all(set(r) == KEYS for r in records)
    kinds = [(r["name"], r["kind"], r["seed"]) for r in records]
    assert kinds == [
        ("searched", "searched", 0),
        ("searched", "searched", 1),
        ("random_1", "random", 0),
        ("random_1", "random", 1),
        ("random_2", "random", 0),
        ("random_2", "random", 1),
        ("fbnet_a", "named", 0),  # the named networks: one seed
        ("fbnet_b", "named", 0),
        ("fbnet_c", "named", 0),
    ]
    searched = records[0]["predicted_latency_ms"]
    assert searched == pytest.approx(
        lut.predict(json.loads((run / "thetas.json").read_text())["argmax_ops"]), abs=1e-4
    )
    for r in records:
        assert r["predicted_latency_ms"] == pytest.approx(lut.predict(r["ops"]), abs=1e-4)
        assert r["measured_latency_ms"] > 0 and 0 <= r["top1"] <= 100
        if r["kind"] == "random":
            assert (
                abs(r["predicted_latency_ms"] / searched - 1) <= 0.1
                and r["ops"] != records[0]["ops"]
            )
        ckpt = torch.load(
            out / "runs" / f"{r['name']}_seed{r['seed']}" / "last.pth", weights_only=True
        )
        assert ckpt["epoch"] == 2 and r["top1"] == pytest.approx(
            ckpt["last_metrics"]["test/top1"], abs=1e-3
        )
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["records"] == records and on_disk["verdict"] == verdict(records)
    assert (out / "pictures" / "search_vs_random.png").stat().st_size > 1000

    # a rerun skips finished trainings and resumes an unfinished one (its epoch-1 checkpoint)
    last = out / "runs" / "random_2_seed1" / "last.pth"
    first = out / "runs" / "random_2_seed1" / "epoch1.pth"
    ckpt = torch.load(last, weights_only=True)
    ckpt["epoch"] = 1
    torch.save(ckpt, first)
    first.replace(last)
    capsys.readouterr()
    again = main(argv)
    err = capsys.readouterr().err
    assert err.count(": done (") == 8 and "random_2 seed 1: resuming" in err
    assert [r["top1"] for r in again["records"]][:5] == [r["top1"] for r in records][:5]
    assert torch.load(last, weights_only=True)["epoch"] == 2
    # other settings in the same folder are refused, with one line
    with pytest.raises(SystemExit, match="other settings"):
        main([*argv[:6], "--num_random", "3", *argv[8:]])


def test_verdict_is_computed_from_the_records():
    def rec(name, kind, top1, ms, seed=0):
        return {"name": name, "kind": kind, "top1": top1, "measured_latency_ms": ms, "seed": seed}

    records = [rec("searched", "searched", 50.0, 5.0), rec("searched", "searched", 52.0, 5.0, 1)]
    records += [rec("random_1", "random", 40.0, 5.1), rec("random_1", "random", 44.0, 5.2, 1)]
    records += [rec("fbnet_a", "named", 55.0, 6.0)]
    result = verdict(records)
    assert result["searched_top1_mean"] == 51.0 and result["random_top1_mean"] == 42.0
    assert result["margin"] == pytest.approx(max(2**0.5, 8**0.5))  # sample std of each group
    assert result["beats_random"] and result["dominated_by"] == [] and result["target_met"]
    records.append(rec("random_2", "random", 60.0, 4.0))  # faster and more accurate
    result = verdict(records)
    assert result["dominated_by"] == ["random_2"] and not result["target_met"]


def test_help_and_a_missing_run_are_one_clear_answer(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--run", "--data_dir", "--out", "--num_random", "--seeds", "--proxy", "--device"):
        assert flag in help_text
    with pytest.raises(SystemExit, match="not a search run folder: it has no thetas.json"):
        main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written for a bad run
