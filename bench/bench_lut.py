"""Benchmarks of the latency lookup table: build time, agreement of two builds, repeated validations.

Run every timing mode under the shared lock, one job at a time:

    flock /tmp/fbnet_heavy.lock python bench/bench_lut.py build --lut_path /tmp/a.json --input_size 224
    python bench/bench_lut.py agree --lut_a luts/fbnet_224_cpu.json --lut_b /tmp/b.json --num_archs 20
    python bench/bench_lut.py summarize luts/fbnet_224_cpu.validation*.json
    python bench/bench_lut.py allocator --input_size 224 --num_archs 6 --processes 3
    flock /tmp/fbnet_heavy.lock python bench/bench_lut.py drift --lut_path luts/fbnet_224_cpu.json

``build`` prints the build time (goal: at most 300 s at 224x224, batch 1). ``agree`` compares two
tables entry by entry and on the predictions for the validation's architectures (the same seed and
named architectures as ``validate_lut``), and once more after scaling table A by the median ratio
b / a of the entries (a machine that ran uniformly faster during one build), and gives the ratio of
the two builds' speed probes (CPU tables); it measures nothing.
``summarize`` gives the median and range of repeated validation reports, how alike their
measurements rank the networks (Kendall tau between each two reports of the same architectures), and
how far those measurements themselves lie apart (per pair of reports, the median over the networks;
also for the pairs whose reports are dated within 10 minutes of each other, and after each pair's
common factor): two tables of the machine can agree only as well as it reproduces its own latencies.
``allocator`` times random networks end to end with glibc as it is and with ``keep_heap``
(:func:`use_allocator`), each in fresh processes, taken in turns: minor page faults per pass,
latency, and how far a network's latency relative to the first one moves between processes.
``drift`` measures the validation's networks in interleaved rounds for minutes and asks what a
build's or a validation's length buys on this machine: how far the machine's speed level (the
typical round's time over the whole run's) spreads between windows of a build's length, and how
alike windows of a validation's length rank the networks, with each round scaled as the
validation scales it (and, for a table that kept its per-round probes, weighted as a matched
validation weighs them), and how the networks' latencies differ between the two compute states
its rounds fall into (``compute_states``), and how far apart two windows of a build's length
(``--build_s``) that do not overlap put the networks' latencies (``build_windows``: what two builds
made one after the other could agree to at best). ``--raw_path`` keeps every round; ``--from_raw``
analyses such a file again without timing anything.
Each mode prints one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from general_functions.io_utils import atomic_write_json  # noqa: E402
from supernet_functions import lut_cli  # noqa: E402
from supernet_functions.lookup_table_builder import (  # noqa: E402
    DEFAULT_TIME_BUDGET_S,
    LatencyLookupTable,
)
from supernet_functions.lut_validation import (  # noqa: E402
    kendall_tau,
    named_archs,
    probe_ratios,
    round_medians,
    sample_archs,
)


def bench_build(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    argv = ["--train_or_sample", "build_lut", "--lut_path", args.lut_path]
    argv += ["--input_size", str(args.input_size), "--search_space", args.search_space]
    argv += ["--threads", str(args.threads), "--seed", str(args.seed), "--progress", "False"]
    if args.time_budget_s:
        argv += ["--time_budget_s", str(args.time_budget_s)]
    lut_cli.main(argv)
    wall = time.perf_counter() - start
    meta = LatencyLookupTable.load(args.lut_path).meta
    return {
        "bench": "lut_build",
        "wall_s": round(wall, 1),
        "build_time_s": meta["build_time_s"],
        "rounds": meta["rounds"],
        "input_size": meta["input_size"],
        "goal_s": 300,
        "date": meta["date"],
        "load_average_before": meta.get("load_average_before"),
        "load_average_after": meta.get("load_average_after"),
    }


def _percent_apart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far apart two positive values are, in percent of their mean (symmetric in x and y)."""
    return np.abs(x - y) / ((x + y) / 2) * 100


def _agreement(pairs: list[tuple[np.ndarray, np.ndarray]], within: float = 3.0) -> dict:
    """How alike pairs of latency vectors are (two measurements of the same networks): per pair the
    median over networks of how far apart they are (percent), summarised over the pairs, with the
    share of pairs within ``within`` percent, and once more after dividing out each pair's common
    factor (the median ratio), which leaves only how the networks differ relative to each other."""
    diffs = [float(np.median(_percent_apart(a, b))) for a, b in pairs]
    shape = [float(np.median(_percent_apart(a * np.median(b / a), b))) for a, b in pairs]
    return {
        **_median_range(diffs),
        "pairs": len(pairs),
        f"share_within_{within:g}_percent": round(float(np.mean(np.array(diffs) <= within)), 3),
        "after_common_factor": _median_range(shape),
    }


def bench_agree(args: argparse.Namespace) -> dict:
    a, b = LatencyLookupTable.load(args.lut_a), LatencyLookupTable.load(args.lut_b)
    a.check_compatible(b.meta["search_space"], b.meta["input_size"], list(b.layers[0]))
    pairs = np.array(
        [(a.query(i, op), b.query(i, op)) for i, layer in enumerate(a.layers) for op in layer]
    )

    entry_diff = _percent_apart(pairs[:, 0], pairs[:, 1])
    # a machine that ran uniformly faster or slower during one build shifts every entry alike; what
    # is left after that factor is what would change the search's choices
    speed = float(np.median(pairs[:, 1] / pairs[:, 0]))
    entry_diff_scaled = _percent_apart(pairs[:, 0] * speed, pairs[:, 1])
    fixed_diff = {
        k: round(abs(a.fixed[k]["median"] - b.fixed[k]["median"]) / b.fixed[k]["median"] * 100, 2)
        for k in a.fixed
    }
    specs = sample_archs(a, args.num_archs, args.seed) + named_archs(a)
    pred_diff = [abs(a.predict(s.ops) - b.predict(s.ops)) / b.predict(s.ops) * 100 for s in specs]
    same_fastest = sum(x == y for x, y in zip(a.fastest_ops(), b.fastest_ops()))
    return {
        "bench": "lut_agreement",
        "entry_median_diff_percent": round(float(np.median(entry_diff)), 2),
        "entry_p90_diff_percent": round(float(np.percentile(entry_diff, 90)), 2),
        "entry_max_diff_percent": round(float(np.max(entry_diff)), 2),
        "b_over_a_median": round(speed, 4),
        "entry_median_diff_after_that_factor_percent": round(
            float(np.median(entry_diff_scaled)), 2
        ),
        "prediction_median_diff_percent": round(float(np.median(pred_diff)), 2),
        "prediction_max_diff_percent": round(float(np.max(pred_diff)), 2),
        "fixed_diff_percent": fixed_diff,
        "same_fastest_op_layers": f"{same_fastest}/{a.num_layers}",
        # the machine's state during each build: memory-bound entries follow the memory probe
        **probe_ratios(a.meta.get("probes"), b.meta.get("probes"), suffix="b_over_a"),
        "num_archs": len(specs),
        "dates": [a.meta.get("date"), b.meta.get("date")],
    }


def _allocator_worker(args: argparse.Namespace) -> dict:
    """One process, one setting: page faults per pass and latency (ms) of each network."""
    import resource

    import torch

    from supernet_functions.lookup_table_builder import default_lut_path, use_allocator
    from supernet_functions.lut_validation import build_network, measure_latencies

    torch.set_num_threads(args.threads)
    setting = use_allocator(args.worker)
    lut = LatencyLookupTable.load(default_lut_path("fbnet", args.input_size))
    models = [build_network(lut, s, torch.device("cpu")) for s in sample_archs(lut, args.num_archs)]
    x = torch.randn(1, 3, args.input_size, args.input_size)
    with torch.inference_mode():
        for _ in range(2):  # warm-up: kernels built, heap grown
            for m in models:
                m(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for m in models:
            m(x)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / len(models)
    ms, _, _ = measure_latencies(models, x, rounds=args.rounds, progress=False)
    return {"allocator": setting, "faults_per_pass": faults, "ms": [float(v) for v in ms]}


def bench_allocator(args: argparse.Namespace) -> dict:
    import subprocess

    runs: dict[str, list[dict]] = {"default": [], "keep_heap": []}
    for _ in range(args.processes):
        for mode in runs:  # in turns, so that both settings see the same phases of the machine
            cmd = [sys.executable, __file__, "allocator", "--worker", mode]
            cmd += [
                f"--{k}={getattr(args, k)}"
                for k in ("input_size", "num_archs", "threads", "rounds")
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    summary: dict = {
        "bench": "lut_allocator",
        "input_size": args.input_size,
        "threads": args.threads,
    }
    median_ms = {}
    for mode, results in runs.items():
        ms = np.array([r["ms"] for r in results])  # [process, network]
        relative = ms / ms[:, :1]  # each network against the first, per process
        median_ms[mode] = np.median(ms, axis=0)
        summary[mode] = {
            "in_effect": sorted({r["allocator"] for r in results}),
            "faults_per_pass": [r["faults_per_pass"] for r in results],
            "median_ms": np.round(median_ms[mode], 2).tolist(),
            "relative_range_percent": round(
                float(np.max(relative.max(0) / relative.min(0) - 1) * 100), 1
            ),
        }
    saved = (1 - median_ms["keep_heap"] / median_ms["default"]) * 100
    summary["keep_heap_time_saved_percent"] = np.round(saved, 1).tolist()
    return summary


def _window_spread(values: np.ndarray, length: int) -> dict:
    """Sd, min and max of the medians of ``values`` over every run of ``length`` in a row."""
    medians = [np.median(values[a : a + length]) for a in range(len(values) - length + 1)]
    return {
        "windows": len(medians),
        "sd": round(float(np.std(medians)), 4),
        "min": round(float(np.min(medians)), 4),
        "max": round(float(np.max(medians)), 4),
    }


def _window_medians(ms: np.ndarray, length: int, step: int = 1) -> list[np.ndarray]:
    """Each network's median over every run of ``length`` rounds (one starting every ``step``
    rounds), the rounds of each run scaled as a build or a validation scales them."""
    return [
        round_medians(ms[a : a + length], True)[0] for a in range(0, len(ms) - length + 1, step)
    ]


def _two_states(compute: np.ndarray, min_rounds: int = 3) -> np.ndarray | None:
    """Split rounds into a faster and a slower compute state: of the splits of the compute probe's
    sorted logarithms that leave at least ``min_rounds`` rounds on each side, the one with the least
    sum of squares around the two means (1-D 2-means). ``True`` marks the faster state; ``None``
    with fewer than ``2 * min_rounds`` rounds."""
    c = np.sort(np.log(compute))
    n = len(c)
    if n < 2 * min_rounds:
        return None
    sums, squares = np.cumsum(c), np.cumsum(c**2)
    k = np.arange(min_rounds, n - min_rounds + 1)  # the lower group holds the k smallest values
    lower = squares[k - 1] - sums[k - 1] ** 2 / k
    upper = (squares[-1] - squares[k - 1]) - (sums[-1] - sums[k - 1]) ** 2 / (n - k)
    split = int(k[np.argmin(lower + upper)])
    return np.log(compute) < (c[split - 1] + c[split]) / 2


def bench_drift(args: argparse.Namespace) -> dict:
    import torch

    from supernet_functions.lookup_table_builder import round_speed, use_allocator
    from supernet_functions.lut_validation import (
        MATCH_PROBE,
        build_network,
        match_rounds,
        measure_rounds,
    )

    lut = LatencyLookupTable.load(args.lut_path)
    if lut.cost != "latency" or lut.meta.get("device") != "cpu":
        raise SystemExit(
            f"drift times networks on the CPU: {args.lut_path} is not a CPU latency table"
        )
    specs = sample_archs(lut, args.num_archs, args.seed) + named_archs(lut)
    names = [s.name for s in specs]
    if args.from_raw:  # analyse a run recorded earlier with --raw_path: nothing is timed
        raw = json.loads(Path(args.from_raw).read_text())
        if raw["names"] != names:
            raise SystemExit(f"{args.from_raw} timed other networks than {args.lut_path} validates")
        ms, ends, samples = np.array(raw["ms"]), np.array(raw["round_end_s"]), raw["probes"]
        allocator = raw.get("allocator", lut.allocator)
    else:
        torch.set_num_threads(args.threads)
        allocator = use_allocator(lut.allocator)
        torch.manual_seed(args.seed)
        models = [build_network(lut, s, torch.device("cpu")) for s in specs]
        size = lut.meta["input_size"]
        x = torch.randn(lut.meta.get("batch_size", 1), 3, size, size)
        ms, ends, probes = measure_rounds(
            models, x, seed=args.seed, duration_s=args.duration_s, progress=args.progress
        )
        samples = probes.samples
    if args.raw_path:
        raw = {"names": names, "ms": ms.tolist(), "round_end_s": ends.tolist()}
        atomic_write_json(args.raw_path, {**raw, "probes": samples, "allocator": allocator})
    level = round_speed(ms)  # each round's time over the typical round's, for the whole run
    round_s = float(np.median(np.diff(ends, prepend=0.0)))
    out: dict = {
        "bench": "lut_drift",
        "lut_path": args.lut_path,
        "allocator": allocator,
        "threads": args.threads,
        "num_archs": len(specs),
        "duration_s": round(float(ends[-1]), 1),
        "rounds": len(ms),
        "round_s": round(round_s, 2),
        "round_level_percentiles_0_10_50_90_100": np.round(
            np.percentile(level, [0, 10, 50, 90, 100]), 3
        ).tolist(),
    }
    compute = np.asarray(samples[MATCH_PROBE])  # a CPU table: probed after every round
    out["corr_level_compute_probe"] = round(float(np.corrcoef(level, compute)[0, 1]), 3)
    out["level_by_window_s"] = {
        str(w): _window_spread(level, max(1, round(w / round_s))) for w in args.windows_s
    }
    fast = _two_states(compute)
    if fast is not None:  # how the networks' latencies differ between the two compute states
        by_state = [round_medians(ms[fast], True)[0], round_medians(ms[~fast], True)[0]]
        ratio = by_state[0] / by_state[1]
        out["compute_states"] = {
            "rounds_fast_slow": [int(fast.sum()), int((~fast).sum())],
            "compute_ms_fast_slow": [round(float(np.median(compute[f])), 4) for f in (fast, ~fast)],
            "tau_between_states": round(kendall_tau(*by_state), 3),
            "fast_over_slow_median": round(float(np.median(ratio)), 3),
            "fast_over_slow_relative_sd_percent": round(float(np.std(np.log(ratio)) * 100), 2),
        }
    # two builds made one after the other can agree no better than two measurements of their length
    # do: every pair of windows of a build's length that do not overlap, each scaled as a build
    # scales its rounds
    length = max(1, round(args.build_s / round_s))
    windows = _window_medians(ms, length)
    apart = [(p, q) for i, p in enumerate(windows) for q in windows[i + length :]]
    if apart:
        out["build_windows"] = {"seconds": args.build_s, "rounds": length, **_agreement(apart)}
    predicted = [lut.predict(s.ops) for s in specs]
    reference = lut.meta.get("probe_rounds")  # the build's conditions, round by round
    out["validation_windows"] = {}
    for k in args.val_rounds:
        # back-to-back validations of k rounds, each scaled as measure_latencies scales them
        starts = range(0, len(ms) - k + 1, k)
        est = _window_medians(ms, k, step=k)
        if len(est) < 2:
            continue
        if reference:  # and as a validation matched to the build's conditions weighs them
            weights = [match_rounds(reference[MATCH_PROBE], compute[a : a + k])[0] for a in starts]
            matched = [round_medians(ms[a : a + k], True, w)[0] for a, w in zip(starts, weights)]
            vs_table = [kendall_tau(predicted, e) for e in matched]
            tau_matched = [round(float(np.median(vs_table)), 3), round(min(vs_table), 3)]
        relative = np.array([e / e.mean() for e in est])
        between = [kendall_tau(p, q) for p, q in itertools.combinations(est, 2)]
        vs_table = [kendall_tau(predicted, e) for e in est]
        out["validation_windows"][str(k)] = {
            "windows": len(est),
            "relative_sd_percent": round(float(relative.std(axis=0).mean() * 100), 2),
            "tau_between": [round(float(np.median(between)), 3), round(min(between), 3)],
            "tau_vs_table": [round(float(np.median(vs_table)), 3), round(min(vs_table), 3)],
        }
        if reference:
            out["validation_windows"][str(k)]["tau_vs_table_matched"] = tau_matched
    return out


def _median_range(values: list[float]) -> dict[str, float]:
    return {
        "median": round(float(np.median(values)), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def bench_summarize(args: argparse.Namespace) -> dict:
    reports = [json.loads(Path(p).read_text()) for p in args.reports]
    out: dict = {"bench": "lut_validations", "num_reports": len(reports)}
    keys = ("pearson_r", "kendall_tau", "mape_percent", "max_ape_percent")
    out.update({key: _median_range([r[key] for r in reports]) for key in keys})
    matched = [r["validation"]["all_rounds"] for r in reports if r["validation"].get("all_rounds")]
    if matched:  # the figures over every round, beside the headline ones from matched rounds
        out["all_rounds"] = {key: _median_range([m[key] for m in matched]) for key in keys}
        out["all_rounds"]["num_reports"] = len(matched)
    out["num_archs"] = sorted({r["num_archs"] for r in reports})
    # the same networks measured at different times: how far their measured ranking is reproducible,
    # a ceiling for any table's Kendall tau on this machine
    names = [tuple(a["name"] for a in r["archs"]) for r in reports]
    if len(reports) > 1 and len(set(names)) == 1:
        measured = [[a["measured"] for a in r["archs"]] for r in reports]
        taus = [kendall_tau(x, y) for x, y in itertools.combinations(measured, 2)]
        out["kendall_tau_between_measurements"] = {**_median_range(taus), "pairs": len(taus)}
        # and how far their latencies reproduce: the agreement that two tables made at those times
        # could reach at best, since each would predict what the machine ran like during its build
        plain = all("measured_all_rounds" in a for r in reports for a in r["archs"])
        key = "measured_all_rounds" if plain else "measured"
        values = [np.array([a[key] for a in r["archs"]]) for r in reports]
        dates = [_dt.datetime.fromisoformat(r["validation"]["date"]) for r in reports]  # ends
        pairs = list(itertools.combinations(range(len(reports)), 2))
        close = [(i, j) for i, j in pairs if abs(dates[i] - dates[j]).total_seconds() <= 600]
        out["latency_diff_between_measurements"] = {
            "values": key,
            **_agreement([(values[i], values[j]) for i, j in pairs]),
        }
        if close:
            out["latency_diff_between_measurements"]["dated_within_10_min"] = _agreement(
                [(values[i], values[j]) for i, j in close]
            )
    out["dates"] = [r["validation"]["date"] for r in reports]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("build", help="time one table build (run under the lock)")
    p.add_argument("--lut_path", required=True)
    p.add_argument("--search_space", default="fbnet")
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time_budget_s", type=float, default=0.0, help="0 = the CLI's default")
    p = sub.add_parser("agree", help="compare two tables (no timing)")
    p.add_argument("--lut_a", required=True)
    p.add_argument("--lut_b", required=True)
    p.add_argument("--num_archs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="the validation's seed")
    p = sub.add_parser("summarize", help="median and range of validation reports")
    p.add_argument("reports", nargs="+")
    p = sub.add_parser("allocator", help="page faults and latency: glibc as it is vs keep_heap")
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--num_archs", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--processes", type=int, default=3, help="fresh processes per setting")
    p.add_argument("--worker", choices=("default", "keep_heap"), help=argparse.SUPPRESS)
    p = sub.add_parser("drift", help="the machine's speed over minutes: what longer runs buy")
    p.add_argument("--lut_path", required=True, help="the table whose validation networks to time")
    p.add_argument("--duration_s", type=float, default=540.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num_archs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="the validation's seed")
    p.add_argument("--windows_s", type=float, nargs="+", default=[60.0, 150.0, 270.0])
    p.add_argument("--val_rounds", type=int, nargs="+", default=[15, 30], help="validation lengths")
    p.add_argument(
        "--build_s", type=float, default=DEFAULT_TIME_BUDGET_S, help="a build's length (seconds)"
    )
    p.add_argument("--raw_path", default="", help="also write every round's times here (JSON)")
    p.add_argument("--from_raw", default="", help="analyse the rounds of a --raw_path file instead")
    p.add_argument("--progress", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    args = parser.parse_args(argv)
    if args.mode == "allocator" and args.worker:
        out = _allocator_worker(args)
    else:
        modes = {
            "build": bench_build,
            "agree": bench_agree,
            "summarize": bench_summarize,
            "allocator": bench_allocator,
            "drift": bench_drift,
        }
        out = modes[args.mode](args)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
