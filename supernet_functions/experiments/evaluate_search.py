"""Does the search beat chance? Searched networks against random ones and a heuristic of the same latency.

Usage (one evaluation per latency target; the search runs of one target are its search seeds)::

    python -m supernet_functions.experiments.evaluate_search --runs runs/supernet/t4_s0 runs/supernet/t4_s1 \\
        --data_dir /path/to/cifar10 --out runs/search_vs_random/t4
    python -m supernet_functions.experiments.evaluate_search --runs runs/supernet/t6_s0 runs/supernet/t6_s1 \\
        --data_dir /path/to/cifar10 --out runs/search_vs_random/t6
    python -m supernet_functions.experiments.evaluate_search --figure runs/search_vs_random/t4 \\
        runs/search_vs_random/t6 --figure_path pictures/search_vs_random.png
    python -m supernet_functions.experiments.evaluate_search --runs RUN --proxy test    # synthetic data, 33 s

The runs must share one table (the same ``lut.json``), search space and ``target_latency_ms``. Then:

1. the networks (:mod:`supernet_functions.experiments.evaluation_plan`): every run's argmax ("searched");
   ``--num_random`` architectures drawn uniformly among those whose predicted latency lies within
   ``--window`` of the searched argmaxes' mean predicted latency, the centre (seeded; never a searched
   argmax); the architecture with the most parameters predicted at or below the centre ("heuristic");
   FBNet-A, -B and -C where they fit the table ("named");
2. training: every network but the named ones once per ``--seeds`` seed, the named ones with the first
   seed (reference points, not the comparison), all with one proxy recipe (the architecture trainer,
   cosine schedule; ``--epochs``, ``--batch_size``, ``--lr``, ``--train_limit``) and with the block and
   head structure the table priced (``lut.structure``);
3. every trained network measured end to end at batch 1 with the table's input size, threads, allocator
   and device, in interleaved rounds (:func:`~supernet_functions.latency.validate.measure_latencies`);
4. the statistics (:mod:`supernet_functions.experiments.evaluation_stats`): per-network means, the table's error on
   these networks (MAPE, Kendall tau), the F test of whether the proxy can rank the random networks at
   all, and the verdict rule; ``summary.json``, ``pictures/search_vs_random.png`` and a printed table.

Every training is its own run folder under ``OUT/runs/``: run the same command again after an
interruption and finished trainings are skipped, unfinished ones resumed from their ``last.pth``. A
finished training also leaves ``result.json`` (its final metrics), so an evaluation copied without its
checkpoints (as SAVED_LOGS keeps them) still goes on or sums up; such networks are timed with their
initial weights, which does the same work. The plan (runs, networks, recipe) is fixed in
``OUT/plan.json`` on the first call; a later call with other settings is refused rather than mixing two
recipes.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.structure import Structure
from general_functions import run_options
from general_functions.checkpoint import load_checkpoint
from general_functions.config_utils import config_from_dict, opt, parse_config
from general_functions.interrupts import Interrupted
from general_functions.io_utils import atomic_write_json, read_json
from general_functions.logging_utils import get_logger
from general_functions.utils import resolve_device
from supernet_functions.experiments.evaluation_figure import plot_evaluations
from supernet_functions.experiments.evaluation_plan import (
    SearchRun,
    cheapest_latency,
    make_plan,
    read_runs,
)
from supernet_functions.experiments.evaluation_stats import anova, network_stats, verdict
from supernet_functions.latency.measure import num_threads, use_allocator
from supernet_functions.latency.table import LatencyLookupTable, LUTError
from supernet_functions.latency.validate import compare, measure_latencies

__all__ = ["PROXIES", "EvaluateConfig", "draw_figure", "evaluate", "main"]

logger = logging.getLogger(__name__)

# The proxy recipes, as ArchTrainConfig values. "cifar10": the trainer's network and optimiser (SGD lr
# 0.1) at batch 128, 5 epochs of all 50,000 images with a cosine schedule, the shortest recipe measured to
# rank random networks of one latency (docs/experiments.md, section 6; 3 epochs at batch 1000 could not);
# --epochs, --batch_size, --lr and --train_limit change it. "test": synthetic data, seconds (the tests).
PROXIES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "dataset": "cifar10",
        "epochs": 5,
        "batch_size": 128,
        "lr": 0.1,
        "train_limit": 0,
        "test_limit": 0,
        "lr_schedule": "cosine",
    },
    "test": {
        "dataset": "fake",
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.1,
        "lr_schedule": "cosine",
        "fake_train_size": 32,
        "fake_test_size": 16,
        "workers": 0,
        "threads": 1,
    },
}
PROG = "python -m supernet_functions.experiments.evaluate_search"
RESULT_FILE = "result.json"  # in each training's folder: its final metrics (see _write_result)
RECIPE_FLAGS = ("epochs", "batch_size", "lr", "lr_warmup_epochs", "train_limit", "test_limit")


def _eta(seconds: float) -> str:
    return str(_dt.timedelta(seconds=round(seconds)))


def _train(net, seed: int, last: Path, plan, out: Path, args) -> dict[str, Any]:
    """Train one network with one seed into ``last``'s folder, resuming from ``last`` if it exists;
    returns the final checkpoint."""
    from architecture_functions.config_for_arch import ArchTrainConfig
    from architecture_functions.training_functions import run

    values = {
        **plan["recipe"],
        **plan["structure"],  # train what the table priced
        "architecture_name": str(out / "archs" / f"{net['name']}.json"),
        "search_space": plan["search_space"],
        "seed": seed,
        "log_dir": str(last.parent.parent),
        "run_name": last.parent.name,
        # a folder without last.pth was killed in its first epoch: nothing to keep, start again
        "overwrite": not last.is_file(),
        "data_dir": args.data_dir,
        "device": args.device,
        "progress": args.progress,
        "resume": str(last) if last.is_file() else "",
    }
    run(config_from_dict(ArchTrainConfig, values))
    return load_checkpoint(last, stage="architecture")


def _plan_order(plan, net) -> int:
    return next(i for i, n in enumerate(plan["networks"]) if n["name"] == net["name"])


def _trainings(plan, seeds: list[int], out: Path):
    """The (network, seed) records the plan asks for and its distinct trainings, the random networks'
    first: their F test says, before the rest is trained, whether the proxy can rank at all."""
    jobs, unique = [], {}
    for net in sorted(plan["networks"], key=lambda n: n["kind"] != "random"):
        for seed in seeds[:1] if net["kind"] == "named" else seeds:
            key = (tuple(net["ops"]), seed)  # two runs with one argmax: one training
            unique.setdefault(key, (net, seed, out / "runs" / f"{net['name']}_seed{seed}"))
            jobs.append((net, seed, key))
    return jobs, unique


def _train_all(
    plan, unique: dict, out: Path, args, log, states: dict, only=None, later: int = 0
) -> dict:
    """Train the distinct trainings in ``unique`` (those of kind ``only`` if given) into ``states``:
    finished ones skipped, unfinished ones resumed. Logs "k of N trainings" and the time the job has
    left: this call's trainings not yet done, plus ``later`` ones the job does after it."""
    spent, trained = 0.0, 0
    total = len(unique)
    todo = [key for key, (net, _, _) in unique.items() if not only or net["kind"] == only]
    for k, (key, (net, seed, folder)) in enumerate(unique.items(), 1):
        if key in states or key not in todo:
            continue
        last = folder / "last.pth"
        state = (
            load_checkpoint(last, stage="architecture") if last.is_file() else _read_result(folder)
        )
        where = f"{k} of {total} trainings: {net['name']} seed {seed}"
        if state is not None and state["epoch"] >= plan["recipe"]["epochs"]:
            log.info("%s: done (%s)", where, folder)
            states[key] = state
            _write_result(folder, state)
            continue
        # the mean time of this call's trainings so far, times the trainings left (this one included)
        left = len(todo) - todo.index(key) + later
        eta = f"about {_eta(spent / trained * left)} left" if trained else "ETA later"
        log.info("%s: %s (%s)", where, "training" if state is None else "resuming", eta)
        start = time.perf_counter()
        states[key] = _train(net, seed, last, plan, out, args)
        _write_result(folder, states[key])
        spent += time.perf_counter() - start
        trained += 1
    return states


def _write_result(folder: Path, state: dict[str, Any]) -> None:
    """``RESULT_FILE``: what the evaluation keeps of a training besides its weights (its epochs, final
    metrics and class count), so that a copy of the run folders without checkpoints still sums up."""
    if "model" in state:  # from a checkpoint: the newest word
        result = {
            "epoch": int(state["epoch"]),
            "classes": int(state["model"]["classifier.weight"].shape[0]),
            "last_metrics": {k: float(v) for k, v in state["last_metrics"].items()},
        }
        atomic_write_json(folder / RESULT_FILE, result)


def _read_result(folder: Path) -> dict[str, Any] | None:
    """A training's ``RESULT_FILE`` where its checkpoint is gone; ``None`` if it has neither."""
    file = folder / RESULT_FILE
    if not file.is_file():
        return None
    result = read_json(file, "training result")  # a folder, binary or huge file: one line
    try:
        return {
            "epoch": int(result["epoch"]),
            "classes": int(result["classes"]),
            "last_metrics": {"test/top1": float(result["last_metrics"]["test/top1"])},
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{file} is not a training result ({exc}); delete it to train again"
        ) from None


def _random_groups(records: list[dict]) -> list[list[float]]:
    """The random networks' top-1, one list (its seeds) per network, in plan order."""
    names = dict.fromkeys(r["name"] for r in records if r["kind"] == "random")
    return [[r["top1"] for r in records if r["name"] == name] for name in names]


def _check_proxy(jobs, states, log) -> dict[str, Any]:
    """The F test over the random networks alone, logged as soon as they are trained."""
    groups = _random_groups(
        [
            {"name": net["name"], "kind": "random", "top1": _top1(states[key])}
            for net, _, key in jobs
            if net["kind"] == "random"
        ]
    )
    ranking = anova(groups)
    f = "nan" if ranking["f"] is None else f"{ranking['f']:.2f}"
    df = f"({ranking['df_between']}, {ranking['df_within']})"
    if ranking["rankable"]:
        log.info(
            "the proxy ranks the random networks: F%s = %s > F_crit = %.2f",
            df,
            f,
            ranking["f_crit"],
        )
    else:
        log.warning(
            "the proxy cannot rank these networks: F%s = %s <= F_crit = %.2f; lengthen it "
            "(--epochs, --batch_size, --lr)",
            df,
            f,
            ranking["f_crit"],
        )
    return ranking


def _top1(state) -> float:
    return round(float(state["last_metrics"]["test/top1"]), 4)


def _measure(states: dict, plan, lut: LatencyLookupTable, args, log) -> dict[Any, float]:
    """Every trained network's latency (ms) at batch 1 on the table's device, threads and allocator,
    built as the table timed its networks: the table's structure, plain modules (no trimmed kernels),
    NCHW."""
    from architecture_functions.config_for_arch import ArchTrainConfig
    from architecture_functions.training_functions import build_model

    meta = lut.meta
    device = resolve_device(meta.get("device", "cpu"))
    values = {**plan["recipe"], **plan["structure"], "trim_kernels": False, "channels_last": "off"}
    cfg = dataclasses.replace(
        config_from_dict(ArchTrainConfig, values), search_space=plan["search_space"]
    )
    size = meta.get("input_size") or 32
    keys, models, fresh = list(states), [], 0
    for key in keys:
        state = states[key]
        spec = ArchSpec("measured", key[0], plan["search_space"])
        if "model" in state:
            classes = state["model"]["classifier.weight"].shape[0]
            model = build_model(cfg, spec, classes, size, device)
            model.load_state_dict(state["model"])
        else:  # the checkpoint is gone: the same network with its initial weights, the same work
            model, fresh = build_model(cfg, spec, state["classes"], size, device), fresh + 1
        models.append(model.eval())
    if fresh:
        log.info(
            "%d of %d networks have no checkpoint: timed with initial weights", fresh, len(keys)
        )
    x = torch.randn(meta.get("batch_size") or 1, 3, size, size, device=device)
    use_allocator(lut.allocator)
    log.info("measuring %d trained networks, %d interleaved rounds", len(models), args.rounds)
    with num_threads(meta.get("threads") if device.type == "cpu" else None):
        median, _, _ = measure_latencies(models, x, args.rounds, progress=args.progress)
    return {key: round(float(v), 4) for key, v in zip(keys, median)}


def _report(nets: list[dict], summary: dict[str, Any]) -> str:
    rows = ["network       kind       seeds  predicted ms  measured ms  top-1 % (mean +- std)"]
    for n in nets:
        rows.append(
            f"{n['name']:<13} {n['kind']:<9} {n['n']:>6}  {n['predicted_latency_ms']:>12.3f}  "
            f"{n['measured_latency_ms']:>11.3f}  {n['top1_mean']:6.2f} +- {n['top1_std']:.2f}"
        )
    f, err, result = summary["anova"], summary["table_error"], summary["verdict"]
    rows.append(
        f"F test over the random networks: F = {f['f']} with df ({f['df_between']}, "
        f"{f['df_within']}), F_crit(95%) = {f['f_crit']}: the proxy "
        + ("can rank them" if f["rankable"] else "cannot rank them")
    )
    rows.append(
        f"table error on the {err['n']} networks: MAPE {err['mape_percent']:.1f}%, Kendall tau "
        f"{err['kendall_tau']}"
    )
    rows.append(
        f"searched {result['searched_top1_mean']:.2f}% (n={result['searched_records']}) vs random "
        f"{result['random_top1_mean']:.2f}% (n={result['random_networks']} networks), heuristic "
        f"{result['heuristic_top1_mean']:.2f}%"
    )
    for name, c in result["conditions"].items():
        mark = {True: "pass", False: "FAIL", None: "skipped"}[c["passed"]]
        rows.append(f"  {name:<20} {mark:<7} value {c['value']} (needed {c['needed']})")
    rows.append(f"verdict: {result['verdict']}")
    return "\n".join(rows)


def _recipe(args) -> dict[str, Any]:
    recipe = dict(PROXIES[args.proxy])
    for key in RECIPE_FLAGS:
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    return recipe


def _fixed_plan(out: Path, runs: list[SearchRun], args) -> dict[str, Any]:
    """The plan in ``out/plan.json``: made on the first call, the same settings required after."""
    recipe = _recipe(args)
    settings = {
        "proxy": args.proxy,
        "num_random": args.num_random,
        "seeds": args.seeds,
        "window": args.window,
        "random_seed": args.random_seed,
    }
    plan_path = out / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        given = [Path(p).resolve() for p in plan.get("runs") or []]
        same_runs = given == [r.path.resolve() for r in runs]
        now = {"recipe": recipe, "settings": settings}
        diff = ([] if same_runs else ["runs"]) + [k for k, v in now.items() if plan.get(k) != v]
        if diff:
            raise ValueError(
                f"{out} holds an evaluation with other {', '.join(diff)} ({plan_path}); use "
                "another --out or the same settings"
            )
        return plan
    plan = make_plan(runs, args.num_random, args.window, args.random_seed)
    plan.update(recipe=recipe, settings=settings)
    (out / "archs").mkdir(exist_ok=True)
    for net in plan["networks"]:
        spec = ArchSpec(net["name"], tuple(net["ops"]), plan["search_space"])
        atomic_write_json(out / "archs" / f"{net['name']}.json", spec.to_dict())
    atomic_write_json(plan_path, plan)
    return plan


def _statistics(records: list[dict], plan: dict[str, Any]):
    """Per-network means, the table's error on the networks (MAPE, Kendall tau of predicted vs
    measured latency, per-network means) and the F test over the random networks' seed records."""
    nets = network_stats(records)
    for n in nets:  # the plan's extra facts (parameters, the run a searched network came from)
        extra = next(p for p in plan["networks"] if p["name"] == n["name"])
        n.update({k: extra[k] for k in ("params_m", "run") if k in extra})
    error = compare(
        [n["predicted_latency_ms"] for n in nets], [n["measured_latency_ms"] for n in nets]
    )
    tau = error["kendall_tau"]
    table_error = {
        "mape_percent": round(error["mape_percent"], 4),
        "kendall_tau": round(tau, 4) if math.isfinite(tau) else None,  # None: all tied
        "n": len(nets),
    }
    return nets, table_error, anova(_random_groups(records))


def evaluate(args) -> dict[str, Any]:
    """One evaluation (one target): plan, train, measure, the statistics and the verdict."""
    runs = read_runs(args.runs)
    lut = runs[0].lut
    if lut.meta.get("device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise LUTError(
            f"the runs' table was measured on CUDA ({lut.meta.get('device_name')}): no CUDA here to "
            "measure the trained networks on"
        )
    out = Path(args.out or Path("runs/search_vs_random") / runs[0].path.name)
    out.mkdir(parents=True, exist_ok=True)
    log = get_logger(out, name=__name__)
    target = runs[0].target_latency_ms
    cheapest = cheapest_latency(lut, list(runs[0].state["candidate_ops"]))
    if not target:
        log.info("the runs had no latency target: the on-target condition is skipped")
    elif target < cheapest:
        log.warning(
            "the target %.4g ms is below the cheapest network of the table (%.4g ms): no network "
            "can meet it; evaluating anyway",
            target,
            cheapest,
        )
    plan = _fixed_plan(out, runs, args)
    log.info(
        "every network is trained and timed with the table's structure: %s",
        Structure.from_dict(plan["structure"]).describe(),
    )
    log.info(
        "evaluating %d search run(s), target %s: %d networks around %.4g ms predicted, recipe %s",
        len(runs),
        f"{target:g} ms" if target else "none",
        len(plan["networks"]),
        plan["centre_ms"],
        plan["recipe"],
    )
    jobs, unique = _trainings(plan, args.seeds, out)
    rest = 0 if args.check_proxy else sum(n["kind"] != "random" for n, _, _ in unique.values())
    states = _train_all(plan, unique, out, args, log, {}, only="random", later=rest)
    check = _check_proxy(jobs, states, log)
    if args.check_proxy:
        atomic_write_json(out / "proxy_check.json", {"recipe": plan["recipe"], "anova": check})
        log.info(
            "wrote %s; the same command without --check_proxy goes on", out / "proxy_check.json"
        )
        return {"recipe": plan["recipe"], "anova": check}
    states = _train_all(plan, unique, out, args, log, states)
    measured = _measure(states, plan, lut, args, log)
    records = [
        {
            "name": net["name"],
            "kind": net["kind"],
            "ops": net["ops"],
            "predicted_latency_ms": net["predicted_latency_ms"],
            "measured_latency_ms": measured[key],
            "seed": seed,
            "top1": _top1(states[key]),
        }
        for net, seed, key in sorted(jobs, key=lambda job: _plan_order(plan, job[0]))
    ]
    nets, table_error, ranking = _statistics(records, plan)
    result = verdict(records, target, table_error["mape_percent"], ranking, args.proxy == "test")
    summary = {
        "runs": [
            {"run": n["run"], "name": n["name"], "ops": n["ops"]}
            for n in plan["networks"]
            if n["kind"] == "searched"
        ],
        "search_space": plan["search_space"],
        "target_latency_ms": target or None,
        "structure": plan["structure"],
        "centre_ms": plan["centre_ms"],
        "recipe": plan["recipe"],
        "settings": plan["settings"],
        "latency": {
            **{k: lut.meta.get(k) for k in ("device", "device_name", "threads", "input_size")},
            "allocator": lut.allocator,
            "rounds": args.rounds,
        },
        "records": records,
        "networks": nets,
        "anova": ranking,
        "table_error": table_error,
        "verdict": result,
    }
    atomic_write_json(out / "summary.json", summary)
    picture = plot_evaluations([summary], out / "pictures" / "search_vs_random.png")
    log.info("%s", _report(nets, summary))
    log.info("wrote %s and %s", out / "summary.json", picture)
    return summary


def draw_figure(outs: list[str], path: str) -> Path:
    """One picture of the evaluations in ``outs`` (each a finished evaluation's folder)."""
    summaries = []
    for given in outs:
        file = Path(given) / "summary.json"
        if not file.is_file():
            raise FileNotFoundError(f"{given} holds no finished evaluation: it has no summary.json")
        summaries.append(json.loads(file.read_text()))
    return plot_evaluations(summaries, path)


@dataclass
class EvaluateConfig:
    """The evaluation's options (``--help``); the device and progress options are the trainers'."""

    runs: list[str] = opt([], "search run folders of one target (thetas.json, ...)")
    run: str = opt("", "one search run folder (the same as --runs RUN)")
    data_dir: str = opt("./cifar10_data", "folder holding cifar-10-batches-py/")
    out: str = opt("", "evaluation folder; empty: runs/search_vs_random/<first run's name>/")
    num_random: int = opt(8, "random architectures")
    seeds: list[int] = opt([0, 1], "training seeds")
    window: float = opt(0.05, "latency window, +-share")
    random_seed: int = opt(0, "seed of the random draw")
    proxy: str = opt(
        "cifar10",
        "proxy training recipe: cifar10 (the default: 5 epochs of all 50,000 images, batch 128, "
        "SGD lr 0.1, cosine) or test (synthetic data, seconds: for the tests)",
        None,
        tuple(sorted(PROXIES)),
    )
    epochs: int | None = opt(None, "proxy epochs (None: the proxy's; cifar10: 5)")
    batch_size: int | None = opt(None, "proxy training batch (None: the proxy's; cifar10: 128)")
    lr: float | None = opt(None, "proxy SGD learning rate (None: the proxy's; cifar10: 0.1)")
    lr_warmup_epochs: int | None = opt(
        None, "proxy linear learning-rate warm-up epochs, per step (None: the proxy's; cifar10: 0)"
    )
    train_limit: int | None = opt(None, "training images (None: the proxy's; cifar10: 0 = all)")
    test_limit: int | None = opt(None, "test images (None: the proxy's; cifar10: 0 = all)")
    check_proxy: bool = opt(
        False, "train the random networks only, report the F test (proxy_check.json) and stop"
    )
    rounds: int = opt(30, "latency measuring rounds")
    device: str = run_options.device()
    progress: bool = run_options.progress()
    figure: list[str] = opt([], "draw these finished evaluations' networks in one picture")
    figure_path: str = opt("pictures/search_vs_random.png", "where --figure draws")

    BOUNDS: ClassVar[dict[str, str]] = {
        "num_random": "[2, inf)",
        "window": "(0, 1)",
        "rounds": "[1, inf)",
        "epochs": "[1, inf)",
        "batch_size": "[1, inf)",
        "lr": "[0, inf)",
        "lr_warmup_epochs": "[0, inf)",
        "train_limit": "[0, inf)",
        "test_limit": "[0, inf)",
    }


def _check_args(args: EvaluateConfig) -> str | None:
    """The first problem with the command line that its bounds do not catch, or None."""
    if args.figure:
        return "--figure draws finished evaluations: give it without --runs" if args.runs else None
    if args.run and args.runs:
        return "give --runs (or --run for one run), not both"
    if not (args.run or args.runs):
        return "give the search runs to evaluate: --runs RUN [RUN ...]"
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        return "need at least 2 distinct --seeds (the F test and the margin)"
    return None


def main(argv: list[str] | None = None) -> dict[str, Any] | Path | None:
    from general_functions.run_folder import USER_ERRORS

    args = parse_config(EvaluateConfig, argv, description=__doc__, prog=PROG)
    problem = _check_args(args)
    if problem:
        sys.exit(f"error: {problem}")
    try:
        if args.figure:
            path = draw_figure(args.figure, args.figure_path)
            get_logger(None, name=__name__).info("wrote %s", path)
            return path
        args.runs = args.runs or [args.run]
        return evaluate(args)
    except (*USER_ERRORS, FileExistsError) as err:
        sys.exit(f"error: {err.args[0] if err.args else err}")
    except Interrupted as err:  # Ctrl-C or SIGTERM: one line, the shell's exit status (130, 143)
        name = signal.Signals(err.signum).name
        print(
            f"interrupted by {name}: run the same command again to continue (finished trainings "
            "are kept; the one cut off resumes from its last epoch)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
