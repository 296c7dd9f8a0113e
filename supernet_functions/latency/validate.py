"""Does the lookup table predict real networks? Build them, measure them end to end, compare.

:func:`validate_lut` samples architectures uniformly from the table's search space (plus the named ones
that fit it), builds each as a real :class:`FBNet`, and measures it:

- latency: ``model(x)`` end to end (eval, inference mode, the table's device, thread count, batch
  size and allocator setting; on CUDA between two CUDA events, as the build times its parts) with the
  build's statistics: the architectures are measured in interleaved rounds (every architecture once
  per round, in a fresh random order, one untimed pass then the fastest of ``reps`` timed passes),
  each round scaled to the typical round's speed (the work is the same every round;
  :func:`~supernet_functions.latency.measure.round_speed`), and a network's latency is its
  median over rounds;
- FLOPs / parameters: counted on the whole network with ``torch.utils.flop_counter``.

It reports Pearson's r, Kendall's tau and the mean absolute percentage error (MAPE) between the table's
prediction (sum of ops + fixed parts) and the measurement, and draws a scatter plot.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from fbnet_building_blocks.arch_specs import ARCHS, ArchSpec
from fbnet_building_blocks.fbnet_builder import FBNet
from fbnet_building_blocks.search_space import get_search_space
from fbnet_building_blocks.summary import count_params
from general_functions.io_utils import atomic_write, atomic_write_json
from general_functions.utils import resolve_device
from supernet_functions.latency.measure import (
    load_average,
    num_threads,
    round_speed,
    time_parts,
    use_allocator,
)
from supernet_functions.latency.table import LatencyLookupTable, LUTError

__all__ = [
    "DEFAULT_VAL_ROUNDS",
    "build_network",
    "compare",
    "kendall_tau",
    "measure_latencies",
    "named_archs",
    "plot_report",
    "sample_archs",
    "save_report",
    "validate_lut",
]

logger = logging.getLogger(__name__)

# Interleaved rounds of a validation; 30 rather than 15 halve how far a network's latency relative to the
# others moves between two back-to-back validations (docs/latency_tables.md).
DEFAULT_VAL_ROUNDS = 30


def named_archs(lut: LatencyLookupTable) -> list[ArchSpec]:
    """Built-in architectures whose ops fit the table (same layer count, default width and input)."""
    ops_known = set.intersection(*(set(d) for d in lut.layers))
    return [
        spec
        for spec in ARCHS.values()
        if len(spec.ops) == lut.num_layers
        and spec.width_mult == 1.0
        and spec.input_size is None
        and set(spec.ops) <= ops_known
    ]


def sample_archs(lut: LatencyLookupTable, num_archs: int, seed: int = 0) -> list[ArchSpec]:
    """``num_archs`` architectures with every layer's op drawn uniformly from the table's ops."""
    rng = np.random.default_rng(seed)
    space = lut.meta["search_space"]
    specs = []
    for i in range(num_archs):
        ops = tuple(str(rng.choice(sorted(d))) for d in lut.layers)
        specs.append(ArchSpec(f"random_{seed}_{i:03d}", ops, space))
    return specs


def build_network(lut: LatencyLookupTable, spec: ArchSpec, device: torch.device) -> FBNet:
    """``spec``'s ops in the table's macro: its search space, input size, structure (block and head)
    and classifier width."""
    meta = lut.meta
    space = get_search_space(meta["search_space"])
    spec = ArchSpec(spec.name, spec.ops, space.name)  # the table's head, not a named arch's own
    structure = lut.structure  # the block and head the table priced
    model = FBNet(
        spec,
        space,
        cnt_classes=meta["cnt_classes"],
        input_size=meta["input_size"],
        head_channels=structure.head_channels,
        head=structure.head,
        dw_bn_relu=structure.dw_bn_relu,
    )
    return model.to(device).eval()


def measure_latencies(
    models: Sequence[torch.nn.Module],
    x: torch.Tensor,
    rounds: int = DEFAULT_VAL_ROUNDS,
    reps: int = 3,
    warmup: int = 1,
    normalize_rounds: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Each model's end-to-end latency (ms): its median over interleaved rounds, and its IQR.

    A round runs every model once, in a fresh random order: ``warmup`` untimed passes, then the
    fastest of ``reps`` timed ones. Each round is then scaled to the typical round's speed
    (:func:`round_speed`), unless ``normalize_rounds`` is off. ``info["raw_ms"]`` holds every round's
    unscaled times ``[round][model]``.
    """
    rng = np.random.default_rng(seed)
    clock = time.perf_counter
    rows = np.zeros((rounds, len(models)))
    with torch.inference_mode():
        for m in models:  # untimed warm-up of every network
            m(x)
        for r in tqdm(range(rounds), desc="measuring rounds", disable=not progress):
            for i in rng.permutation(len(models)):
                for _ in range(warmup):
                    models[i](x)
                passes = [time_parts([models[i]], x, x.device, clock)[0] for _ in range(reps)]
                rows[r, i] = min(passes) * 1e3
    speed = round_speed(rows)
    scaled = rows / speed[:, None] if normalize_rounds else rows
    q25, q50, q75 = np.percentile(scaled, [25, 50, 75], axis=0)
    info = {
        "round_speed_min": round(float(speed.min()), 3),
        "round_speed_max": round(float(speed.max()), 3),
        "raw_ms": np.round(rows, 4).tolist(),
    }
    return q50, q75 - q25, info


def _count_macs(model: torch.nn.Module, input_size: int, batch_size: int) -> float:
    """Multiply-adds per image of the whole network (``torch.utils.flop_counter``)."""
    x = torch.zeros(batch_size, 3, input_size, input_size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 2 / batch_size


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):  # average the ranks of tied values
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) pairs over the pairs untied in x and in y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    untied_x, untied_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float(np.sum(dx * dy) / np.sqrt(untied_x * untied_y))


def compare(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Pearson r, Kendall tau-b, Spearman rho, MAPE, max APE and mean signed error (percent)."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    err = (p - m) / m * 100.0
    return {
        "pearson_r": float(np.corrcoef(p, m)[0, 1]),
        "kendall_tau": kendall_tau(p, m),
        "spearman_rho": float(np.corrcoef(_ranks(p), _ranks(m))[0, 1]),
        "mape_percent": float(np.mean(np.abs(err))),
        "max_ape_percent": float(np.max(np.abs(err))),
        "mean_signed_error_percent": float(np.mean(err)),
    }


def validate_lut(
    lut: LatencyLookupTable,
    num_archs: int = 20,
    seed: int = 0,
    include_named: bool = True,
    device: str | None = None,
    threads: int | None = None,
    rounds: int = DEFAULT_VAL_ROUNDS,
    reps: int = 3,
    normalize_rounds: bool = True,
    allocator: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure ``num_archs`` random (+ named) architectures and compare them with the table.

    The device, thread count and allocator setting (:func:`use_allocator`; tables without one were
    measured with ``"default"``) default to the table's own; other settings are allowed, with a
    warning. Counted tables (FLOPs, parameters) are counted on the meta device.
    """
    meta, cost = lut.meta, lut.cost
    if rounds < 1:
        raise ValueError(f"a validation needs at least 1 measuring round, got {rounds}")
    specs = sample_archs(lut, num_archs, seed) + (named_archs(lut) if include_named else [])
    if len(specs) < 3:
        raise ValueError(f"need at least 3 architectures to compare, got {len(specs)}")
    if cost != "latency":
        device = "cpu"  # counted, not timed: any device gives the same counts
    elif device is None:
        device = meta.get("device", "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise LUTError(
                f"the table {lut.path or ''} was measured on CUDA ({meta.get('device_name')}) and "
                "torch sees no CUDA device here: validate it on its own device (or pass --device cpu "
                "to compare it with this machine anyway)"
            )
    dev = resolve_device(device)
    if threads is None:
        threads = meta.get("threads") or torch.get_num_threads()
    if cost == "latency":
        allocator = use_allocator(allocator or lut.allocator)
        here = {"device": dev.type, "allocator": allocator}
        built = {"device": meta.get("device", dev.type), "allocator": lut.allocator}
        if dev.type == "cpu":
            here["threads"], built["threads"] = threads, meta.get("threads") or threads
        for key, value in here.items():
            if value != built[key]:
                logger.warning(
                    "validating with %s %s a table measured with %s: expect a mismatch",
                    key,
                    value,
                    built[key],
                )
    start = time.perf_counter()
    torch.manual_seed(seed)
    build_dev = dev if cost == "latency" else torch.device("meta")  # counting needs shapes only
    with build_dev:
        models = [build_network(lut, spec, build_dev) for spec in specs]
    size, batch = meta["input_size"], meta.get("batch_size", 1)
    info: dict[str, Any] = {}
    if cost == "latency":
        x = torch.randn(batch, 3, size, size, device=dev)
        load_before = load_average()
        with num_threads(threads if dev.type == "cpu" else None):
            measured, spread, info = measure_latencies(
                models, x, rounds, reps, 1, normalize_rounds, seed, progress
            )
        info.update(load_average_before=load_before, load_average_after=load_average())
    else:
        count = (lambda m: _count_macs(m, size, batch)) if cost == "flops" else count_params
        measured = np.array([count(m) / 1e6 for m in models])
        spread = np.zeros(len(models))
    raw = info.pop("raw_ms", None)
    predicted = [lut.predict(spec.ops) for spec in specs]
    archs = [
        {
            "name": spec.name,
            "ops": list(spec.ops),
            "predicted": round(float(p), 5),
            "measured": round(float(m), 5),
            "measured_iqr": round(float(s), 5),
            "error_percent": round(float((p - m) / m * 100.0), 3),
        }
        for spec, p, m, s in zip(specs, predicted, measured, spread)
    ]
    timed = cost == "latency"
    keys = ("search_space", "input_size", "batch_size", "device", "device_name", "threads", "date")
    keys += ("allocator", "rounds", "build_time_s")
    report = {
        **{k: round(v, 4) for k, v in compare(predicted, measured).items()},
        "num_archs": len(specs),
        "num_random": num_archs,
        "num_named": len(specs) - num_archs,
        "cost": cost,
        "unit": meta.get("unit"),
        "lut_path": str(lut.path) if lut.path else None,
        "lut_meta": {k: meta.get(k) for k in keys},
        "validation": {
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": dev.type,
            "threads": threads if dev.type == "cpu" else None,
            "seed": seed,
            "rounds": rounds if timed else None,
            "reps": reps if timed else None,
            "normalize_rounds": normalize_rounds,
            "allocator": allocator if timed else None,
            "torch_version": torch.__version__,
            "time_s": round(time.perf_counter() - start, 1),
            **info,
        },
        "archs": archs,
    }
    if raw is not None:
        report["raw_ms"] = raw  # every round's unscaled times [round][arch], for re-analysis
    return report


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_json(path, report)
    return path


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Scatter of predicted vs measured, with the y = x line; named architectures labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = np.array([a["predicted"] for a in report["archs"]])
    meas = np.array([a["measured"] for a in report["archs"]])
    named = np.array([not a["name"].startswith("random_") for a in report["archs"]])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(meas[~named], pred[~named], s=18, label="random")
    ax.scatter(meas[named], pred[named], s=24, marker="s", label="named")
    for a, is_named in zip(report["archs"], named):
        if is_named:
            ax.annotate(a["name"], (a["measured"], a["predicted"]), fontsize=6)
    lo, hi = min(pred.min(), meas.min()) * 0.95, max(pred.max(), meas.max()) * 1.05
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    unit = report.get("unit", "")
    meta = report["lut_meta"]
    ax.set_xlabel(f"measured ({unit})")
    ax.set_ylabel(f"predicted by the table ({unit})")
    ax.set_title(
        f"{report['cost']}: {meta['search_space']} {meta['input_size']}px batch {meta['batch_size']}\n"
        f"r={report['pearson_r']:.3f} tau={report['kendall_tau']:.3f} "
        f"MAPE={report['mape_percent']:.1f}% (n={report['num_archs']})",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path
