"""Does the search beat chance? The searched network against random ones of the same predicted latency.

Usage::

    python -m supernet_functions.evaluate_search --run runs/supernet_cpu_cifar10/<run> \\
        --data_dir ../shared/data/cifar10
    python -m supernet_functions.evaluate_search --run RUN --proxy test      # synthetic data, seconds

For the search run ``RUN`` (its ``thetas.json`` and ``lut.json``) this

1. draws ``--num_random`` architectures of the run's search space uniformly among those whose
   predicted latency lies within ``--window`` (10%) of the searched argmax's
   (:mod:`supernet_functions.random_archs`, seeded; never the argmax itself);
2. trains the searched argmax and each random architecture once per ``--seeds`` seed, and FBNet-A, -B
   and -C once (the first seed: the named networks are reference points, not the comparison), all with
   one proxy recipe: the architecture trainer (:mod:`architecture_functions.training_functions`) with
   its defaults, a cosine schedule over ``--epochs``;
3. measures every trained network end to end at batch 1 with the table's input size, thread count,
   allocator and device, in interleaved rounds (:func:`~supernet_functions.lut_validation.
   measure_latencies`, the table validation's method);
4. writes ``summary.json`` (one record per network and seed: name, kind, ops, predicted and measured
   latency, seed, final-epoch test top-1) and ``pictures/search_vs_random.png`` into ``--out``, and
   prints a table and the verdict.

Every training is its own run folder under ``OUT/runs/``: run the same command again after an
interruption and finished trainings are skipped, unfinished ones resumed from their ``last.pth``.
The plan (architectures and recipe) is fixed in ``OUT/plan.json`` on the first call; a later call with
other settings is refused rather than mixing two recipes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fbnet_building_blocks.arch_specs import ARCHS, ArchSpec
from general_functions.checkpoint import load_checkpoint
from general_functions.config_utils import config_from_dict
from general_functions.io_utils import atomic_write_json
from general_functions.logging_utils import get_logger
from general_functions.utils import resolve_device

from .lookup_table_builder import num_threads, use_allocator
from .lut_validation import measure_latencies
from .random_archs import sample_within_latency
from .sampling import LUT_FILE, load_table, read_thetas

__all__ = ["PROXIES", "NAMED", "make_plan", "verdict", "main"]

logger = logging.getLogger(__name__)

NAMED = ("fbnet_a", "fbnet_b", "fbnet_c")
# The proxy recipes: the trainer's defaults (batch 1000, SGD lr 0.1, the original's network) with a
# cosine schedule over a few epochs. "cifar10": 3 epochs of all 50,000 images, about 6-9 minutes per
# network on this project's 2-core CPU (FBNet-A: 2 minutes per epoch). "test": synthetic, seconds.
PROXIES: dict[str, dict[str, Any]] = {
    "cifar10": {"dataset": "cifar10", "epochs": 3, "lr_schedule": "cosine"},
    "test": {
        "dataset": "fake",
        "epochs": 2,
        "lr_schedule": "cosine",
        "batch_size": 16,
        "fake_train_size": 32,
        "fake_test_size": 16,
        "workers": 0,
        "threads": 1,
    },
}


def make_plan(run_dir: Path, num_random: int, window: float, seed: int) -> dict[str, Any]:
    """The networks to train: the run's argmax, random ones in its latency window, FBNet-A/B/C."""
    state = read_thetas(run_dir)
    lut = load_table(run_dir / LUT_FILE)
    ops = list(state["argmax_ops"])
    center = lut.predict(ops)
    found, draws = sample_within_latency(
        lut, state["candidate_ops"], center, window, num_random, seed, exclude=[ops]
    )
    nets = [{"name": "searched", "kind": "searched", "ops": ops}]
    nets += [
        {"name": f"random_{i}", "kind": "random", "ops": o} for i, (o, _) in enumerate(found, 1)
    ]
    known = set.intersection(*(set(layer) for layer in lut.layers))
    for name in NAMED:  # the named networks where they fit the run's table
        spec = ARCHS[name]
        if len(spec.ops) == lut.num_layers and set(spec.ops) <= known:
            nets.append({"name": name, "kind": "named", "ops": list(spec.ops)})
    for net in nets:
        net["predicted_latency_ms"] = round(lut.predict(net["ops"]), 5)
    return {
        "run": str(run_dir),
        "search_space": state["search_space"],
        "epoch": state["epoch"],
        "window": window,
        "random_seed": seed,
        "random_proposals": draws,
        "networks": nets,
    }


def _train(net, seed: int, recipe: dict[str, Any], out: Path, args, log) -> dict[str, Any]:
    """Train (or resume, or skip) one network with one seed; returns its final checkpoint."""
    from architecture_functions.config_for_arch import ArchTrainConfig
    from architecture_functions.training_functions import run

    run_dir = out / "runs" / f"{net['name']}_seed{seed}"
    last = run_dir / "last.pth"
    if last.is_file():
        state = load_checkpoint(last, stage="architecture")
        if state["epoch"] >= recipe["epochs"]:
            log.info("%s seed %d: done (%s)", net["name"], seed, run_dir)
            return state
    arch = net["name"] if net["kind"] == "named" else str(out / "archs" / f"{net['name']}.json")
    values = {
        **recipe,
        "architecture_name": arch,
        "search_space": args.search_space,
        "seed": seed,
        "log_dir": str(out / "runs"),
        "run_name": run_dir.name,
        # a folder without last.pth was killed in its first epoch: nothing to keep, start again
        "overwrite": not last.is_file(),
        "data_dir": args.data_dir,
        "device": args.device,
        "progress": args.progress,
        "resume": str(last) if last.is_file() else "",
    }
    log.info("%s seed %d: %s", net["name"], seed, "resuming" if last.is_file() else "training")
    run(config_from_dict(ArchTrainConfig, values))
    return load_checkpoint(last, stage="architecture")


def _measure(trained: list[tuple[dict, int, dict]], lut, recipe, args, log) -> list[float]:
    """Every trained network's latency (ms) at batch 1 on the table's device, threads, allocator."""
    from architecture_functions.config_for_arch import ArchTrainConfig
    from architecture_functions.training_functions import build_model

    meta = lut.meta
    if meta.get("device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"the run's table was measured on CUDA ({meta.get('device_name')}): no CUDA"
        )
    device = resolve_device(meta.get("device", "cpu"))
    # the trained structure as plain modules (no trimmed kernels, NCHW), as the table timed its nets
    cfg = config_from_dict(
        ArchTrainConfig, {**recipe, "trim_kernels": False, "channels_last": "off"}
    )
    cfg = dataclasses.replace(cfg, search_space=args.search_space)
    models = []
    for net, _, state in trained:
        spec = ArchSpec(net["name"], tuple(net["ops"]), args.search_space)
        classes = state["model"]["classifier.weight"].shape[0]
        model = build_model(cfg, spec, classes, meta["input_size"], device)
        model.load_state_dict(state["model"])
        models.append(model.eval())
    size = meta["input_size"]
    x = torch.randn(meta.get("batch_size", 1), 3, size, size, device=device)
    use_allocator(lut.allocator)
    log.info("measuring %d networks, %d interleaved rounds", len(models), args.rounds)
    with num_threads(meta.get("threads") if device.type == "cpu" else None):
        median, _, _ = measure_latencies(models, x, args.rounds, progress=args.progress)
    return [round(float(v), 4) for v in median]


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def verdict(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's target, computed from the records.

    Met when the searched network's mean top-1 over its seeds exceeds the random records' mean by
    more than the larger of the two standard deviations (searched: over seeds; random: over every
    random network and seed), and no network (top-1 and latency averaged over its seeds) is both
    faster (measured) and more accurate than the searched one.
    """
    searched = [r for r in records if r["kind"] == "searched"]
    random = [r for r in records if r["kind"] == "random"]
    s_top1, r_top1 = [r["top1"] for r in searched], [r["top1"] for r in random]
    out = {
        "searched_top1_mean": float(np.mean(s_top1)),
        "searched_top1_std": _std(s_top1),
        "searched_measured_latency_ms": float(
            np.mean([r["measured_latency_ms"] for r in searched])
        ),
        "random_top1_mean": float(np.mean(r_top1)) if r_top1 else math.nan,
        "random_top1_std": _std(r_top1),
    }
    out["margin"] = max(out["searched_top1_std"], out["random_top1_std"])
    out["beats_random"] = bool(out["searched_top1_mean"] - out["random_top1_mean"] > out["margin"])
    dominating = []
    for name in dict.fromkeys(r["name"] for r in records if r["kind"] != "searched"):
        mine = [r for r in records if r["name"] == name]
        top1 = np.mean([r["top1"] for r in mine])
        ms = np.mean([r["measured_latency_ms"] for r in mine])
        if ms < out["searched_measured_latency_ms"] and top1 > out["searched_top1_mean"]:
            dominating.append(name)
    out["dominated_by"] = dominating
    out["target_met"] = out["beats_random"] and not dominating
    return out


def _report(records: list[dict[str, Any]], result: dict[str, Any]) -> str:
    rows = ["network     kind      seeds  predicted ms  measured ms  top-1 % (mean +- std)"]
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name]
        top1 = [r["top1"] for r in mine]
        rows.append(
            f"{name:<11} {mine[0]['kind']:<9} {len(mine):>5}  {mine[0]['predicted_latency_ms']:>12.3f}"
            f"  {np.mean([r['measured_latency_ms'] for r in mine]):>11.3f}"
            f"  {np.mean(top1):6.2f} +- {_std(top1):.2f}"
        )
    gap = result["searched_top1_mean"] - result["random_top1_mean"]
    rows.append(
        f"searched {result['searched_top1_mean']:.2f}% vs random {result['random_top1_mean']:.2f}% "
        f"(+-{result['random_top1_std']:.2f}): gap {gap:+.2f} points, needed > "
        f"{result['margin']:.2f}: {'yes' if result['beats_random'] else 'NO'}"
    )
    rows.append(
        "faster and more accurate than the searched network: "
        + (", ".join(result["dominated_by"]) or "none")
    )
    rows.append(f"target {'MET' if result['target_met'] else 'NOT MET'}")
    return "\n".join(rows)


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=110)
    for kind, marker in (("random", "o"), ("named", "s"), ("searched", "*")):
        mine = [r for r in records if r["kind"] == kind]
        if mine:
            ax.scatter(
                [r["measured_latency_ms"] for r in mine],
                [r["top1"] for r in mine],
                marker=marker,
                s=120 if kind == "searched" else 40,
                label=kind,
            )
    for name in dict.fromkeys(r["name"] for r in records if r["kind"] == "named"):
        r = next(r for r in records if r["name"] == name)
        ax.annotate(name, (r["measured_latency_ms"], r["top1"]), fontsize=7)
    ax.set_xlabel("measured latency, batch 1 (ms)")
    ax.set_ylabel("test top-1 after the proxy recipe (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def evaluate(args) -> dict[str, Any]:
    run_dir = Path(args.run)
    for name in ("thetas.json", LUT_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a search run folder: it has no {name}")
    out = Path(args.out or Path("SAVED_LOGS/search_vs_random") / run_dir.name)
    recipe = {**PROXIES[args.proxy]}
    for key in ("epochs", "train_limit", "test_limit", "batch_size"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    settings = {"num_random": args.num_random, "seeds": args.seeds, "window": args.window}
    out.mkdir(parents=True, exist_ok=True)
    log = get_logger(out, name=__name__)
    plan_path = out / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        now = {"recipe": recipe, "settings": settings, "run": str(run_dir)}
        diff = [k for k, v in now.items() if plan.get(k) != v]
        if diff:
            raise ValueError(
                f"{out} holds an evaluation with other {', '.join(diff)} ({plan_path}); "
                "use another --out or the same settings"
            )
    else:
        plan = make_plan(run_dir, args.num_random, args.window, args.random_seed)
        plan.update(recipe=recipe, settings=settings)
        (out / "archs").mkdir(exist_ok=True)
        for net in plan["networks"]:
            spec = ArchSpec(net["name"], tuple(net["ops"]), plan["search_space"])
            atomic_write_json(out / "archs" / f"{net['name']}.json", spec.to_dict())
        atomic_write_json(plan_path, plan)
    args.search_space = plan["search_space"]
    log.info("evaluating %s: %d networks, recipe %s", run_dir, len(plan["networks"]), recipe)
    trained = []
    for net in plan["networks"]:
        for seed in args.seeds[:1] if net["kind"] == "named" else args.seeds:
            trained.append((net, seed, _train(net, seed, recipe, out, args, log)))
    lut = load_table(run_dir / LUT_FILE)
    measured = _measure(trained, lut, recipe, args, log)
    records = [
        {
            "name": net["name"],
            "kind": net["kind"],
            "ops": net["ops"],
            "predicted_latency_ms": net["predicted_latency_ms"],
            "measured_latency_ms": ms,
            "seed": seed,
            "top1": round(float(state["last_metrics"]["test/top1"]), 4),
        }
        for (net, seed, state), ms in zip(trained, measured)
    ]
    result = verdict(records)
    summary = {
        "run": str(run_dir),
        "recipe": recipe,
        "settings": settings,
        "latency": {k: lut.meta.get(k) for k in ("device", "device_name", "threads", "input_size")},
        "records": records,
        "verdict": result,
    }
    atomic_write_json(out / "summary.json", summary)
    _plot(records, out / "pictures" / "search_vs_random.png")
    log.info("%s", _report(records, result))
    log.info("wrote %s and %s", out / "summary.json", out / "pictures" / "search_vs_random.png")
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m supernet_functions.evaluate_search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="search run folder (holds thetas.json, lut.json)")
    p.add_argument(
        "--data_dir", default="./cifar10_data", help="folder holding cifar-10-batches-py/"
    )
    p.add_argument("--out", default="", help="default: SAVED_LOGS/search_vs_random/<run name>/")
    p.add_argument("--num_random", type=int, default=6, help="random architectures (default 6)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (0 1)")
    p.add_argument("--window", type=float, default=0.1, help="latency window, +-share (0.1)")
    p.add_argument("--random_seed", type=int, default=0, help="seed of the random draw (0)")
    p.add_argument("--proxy", default="cifar10", choices=sorted(PROXIES), help="proxy recipe")
    p.add_argument("--epochs", type=int, help="proxy epochs (cifar10: 3)")
    p.add_argument("--train_limit", type=int, help="training images (default: all)")
    p.add_argument("--test_limit", type=int, help="test images (default: all)")
    p.add_argument("--batch_size", type=int, help="training batch (default: the trainer's 1000)")
    p.add_argument("--rounds", type=int, default=30, help="latency measuring rounds (30)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training")
    p.add_argument("--progress", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    from architecture_functions.training_functions import USER_ERRORS

    args = _parser().parse_args(argv)
    if args.num_random < 1 or not 0 < args.window < 1 or args.rounds < 1:
        sys.exit("error: need --num_random >= 1, 0 < --window < 1 and --rounds >= 1")
    try:
        return evaluate(args)
    except (*USER_ERRORS, FileExistsError) as err:
        sys.exit(f"error: {err.args[0] if err.args else err}")


if __name__ == "__main__":
    main()
