"""Benchmarks of the latency lookup table: build time, two builds' agreement, independent timing.

    python bench/bench_lut.py build --lut_path /tmp/a.json --input_size 224
    python bench/bench_lut.py agree --lut_a /tmp/a.json --lut_b /tmp/b.json
    python bench/bench_lut.py independent --lut_path /tmp/a.json --repeats 3

``build`` runs the default build command and prints its time (goal: at most 300 s at 224x224, batch 1).
``agree`` compares two tables entry by entry and on the predictions for the validation's architectures
(the same seed and named architectures as ``validate_lut``), once more after dividing out the median
ratio b / a of the entries (a machine that ran uniformly faster during one build); it times nothing.
Two builds' agreement is reported, not bounded: a build predicts what the machine ran like during its
minutes (docs/latency_tables.md).
``independent`` checks a CPU table against what a user runs: FBNet-A/B/C and ``--num_random`` random
networks built by ``get_model`` in the table's macro (FBNet-A/B/C where they fit the table), timed in plain Python processes (the allocator
left as it is, none of the table code's timing), batch 1, the table's thread count, ``--rounds``
interleaved rounds (each network once per round in a fresh order: one untimed pass, then the fastest of
``--reps``; its latency is the median over rounds). Each of ``--repeats`` fresh processes gives
Kendall tau, Pearson r and MAPE of the table's predictions; the JSON line adds their medians.
Each mode prints one JSON line (``--out`` also writes it to a file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAMED = ("fbnet_a", "fbnet_b", "fbnet_c")


def bench_build(args: argparse.Namespace) -> dict:
    from supernet_functions.latency import cli as lut_cli
    from supernet_functions.latency.table import LatencyLookupTable

    start = time.perf_counter()
    argv = ["--train_or_sample", "build_lut", "--lut_path", args.lut_path]
    argv += ["--input_size", str(args.input_size), "--search_space", args.search_space]
    argv += ["--threads", str(args.threads), "--seed", str(args.seed), "--progress", "False"]
    if args.overwrite:
        argv += ["--overwrite", "True"]
    lut_cli.main(argv)
    wall = time.perf_counter() - start
    meta = LatencyLookupTable.load(args.lut_path).meta
    return {
        "bench": "lut_build",
        "wall_s": round(wall, 1),
        "build_time_s": meta["build_time_s"],
        "rounds": meta["rounds"],
        "input_size": meta["input_size"],
        "allocator": meta["allocator"],
        "goal_s": 300,
        "load_average_before": meta.get("load_average_before"),
        "load_average_after": meta.get("load_average_after"),
    }


def _percent_apart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far apart two positive values are, in percent of their mean (symmetric in x and y)."""
    return np.abs(x - y) / ((x + y) / 2) * 100


def bench_agree(args: argparse.Namespace) -> dict:
    from supernet_functions.latency.table import LatencyLookupTable
    from supernet_functions.latency.validate import named_archs, sample_archs

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
        "same_fastest_op_layers": f"{same_fastest}/{a.num_layers}",
        "num_archs": len(specs),
    }


def _time_networks(job: dict) -> dict:
    """The worker of ``independent``: a plain process that builds the networks with ``get_model``
    and times ``model(x)`` with a clock; nothing of the table code's measuring, no allocator change."""
    import torch

    from fbnet_building_blocks.arch_specs import ArchSpec
    from fbnet_building_blocks.fbnet_builder import get_model

    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    space, size = job["search_space"], job["input_size"]
    models = [
        get_model(
            ArchSpec(name, tuple(ops), space),
            cnt_classes=job["cnt_classes"],
            search_space=space,
            input_size=size,
            head_channels=job["head_channels"],
        ).eval()
        for name, ops in job["archs"]
    ]
    x = torch.randn(job["batch_size"], 3, size, size)
    rng = np.random.default_rng(job["seed"])
    ms = np.zeros((job["rounds"], len(models)))
    with torch.inference_mode():
        for model in models:  # first calls build kernels
            model(x)
        for r in range(job["rounds"]):
            for i in rng.permutation(len(models)):
                models[i](x)
                passes = []
                for _ in range(job["reps"]):
                    t0 = time.perf_counter()
                    models[i](x)
                    passes.append(time.perf_counter() - t0)
                ms[r, i] = min(passes) * 1e3
    return {"ms": np.median(ms, axis=0).tolist(), "threads": torch.get_num_threads()}


def bench_independent(args: argparse.Namespace) -> dict:
    from fbnet_building_blocks.arch_specs import ARCHS
    from supernet_functions.latency.table import LatencyLookupTable, LUTError
    from supernet_functions.latency.validate import compare, sample_archs

    try:
        lut = LatencyLookupTable.load(args.lut_path)
    except LUTError as err:
        raise SystemExit(f"error: {err}") from None
    meta = lut.meta
    if lut.cost != "latency" or meta.get("device") != "cpu":
        raise SystemExit(f"error: {args.lut_path} is not a CPU latency table: nothing to time here")
    ops = set.intersection(*(set(layer) for layer in lut.layers))
    named = [
        ARCHS[n] for n in NAMED if len(ARCHS[n].ops) == lut.num_layers and set(ARCHS[n].ops) <= ops
    ]
    specs = named + sample_archs(lut, args.num_random, args.seed)
    job = {
        "archs": [(s.name, list(s.ops)) for s in specs],
        "search_space": meta["search_space"],
        "input_size": meta["input_size"],
        "cnt_classes": meta["cnt_classes"],
        "head_channels": meta["head_channels"],
        "batch_size": meta.get("batch_size", 1),
        "threads": meta.get("threads") or 1,
        "rounds": args.rounds,
        "reps": args.reps,
        "seed": args.seed,
    }
    predicted = np.array([lut.predict(s.ops) for s in specs])
    repeats, measured = [], []
    for k in range(args.repeats):
        done = subprocess.run(
            [sys.executable, __file__, "_worker"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise SystemExit(f"error: timing process {k + 1} failed:\n{done.stderr[-2000:]}")
        # rounded first, so that the figures can be recomputed from the timings this file stores
        ms = np.round(json.loads(done.stdout.strip().splitlines()[-1])["ms"], 4)
        measured.append(ms)
        figures = {key: round(v, 4) for key, v in compare(predicted, ms).items()}
        print(f"repeat {k + 1}/{args.repeats}: {json.dumps(figures)}", file=sys.stderr, flush=True)
        repeats.append({**figures, "measured_ms": ms.tolist()})
    keys = ("kendall_tau", "pearson_r", "mape_percent", "mean_signed_error_percent")
    median_ms = np.median(measured, axis=0)
    return {
        "bench": "lut_independent",
        "lut_path": args.lut_path,
        "lut_allocator": lut.allocator,
        "threads": job["threads"],
        "rounds": args.rounds,
        "num_archs": len(specs),
        **{f"median_{key}": round(float(np.median([r[key] for r in repeats])), 4) for key in keys},
        "repeats": repeats,
        "archs": [
            {
                "name": s.name,
                "predicted_ms": round(float(p), 3),
                "measured_ms": round(float(m), 3),
                "error_percent": round(float((p - m) / m * 100), 2),
            }
            for s, p, m in zip(specs, predicted, median_ms)
        ],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="mode", required=True, metavar="{build,agree,independent}")
    p = sub.add_parser(
        "build", allow_abbrev=False, help="time one table build (the default build command)"
    )
    p.add_argument("--lut_path", required=True)
    p.add_argument("--search_space", default="fbnet")
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --lut_path")
    p = sub.add_parser("agree", allow_abbrev=False, help="compare two tables (no timing)")
    p.add_argument("--lut_a", required=True)
    p.add_argument("--lut_b", required=True)
    p.add_argument("--num_archs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="the validation's seed")
    p = sub.add_parser(
        "independent", allow_abbrev=False, help="a table against plain get_model processes"
    )
    p.add_argument("--lut_path", required=True, help="a CPU latency table")
    p.add_argument("--repeats", type=int, default=3, help="fresh timing processes")
    p.add_argument("--num_random", type=int, default=27, help="random networks beside FBNet-A/B/C")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per process")
    p.add_argument("--reps", type=int, default=3, help="timed passes per network per round")
    p.add_argument("--seed", type=int, default=0, help="seed of the random networks")
    for p in sub.choices.values():
        p.add_argument("--out", default="", help="also write the JSON line to this file")
    sub.add_parser(
        "_worker", allow_abbrev=False
    )  # independent's timing process: a job as JSON on stdin
    args = parser.parse_args(argv)
    if args.mode == "_worker":
        out = _time_networks(json.loads(sys.stdin.read()))
    else:
        if args.mode == "independent" and min(args.repeats, args.rounds, args.reps) < 1:
            parser.error("--repeats, --rounds and --reps must be at least 1")
        modes = {"build": bench_build, "agree": bench_agree, "independent": bench_independent}
        out = modes[args.mode](args)
        if args.out:
            from general_functions.io_utils import atomic_write_json

            atomic_write_json(args.out, out)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
