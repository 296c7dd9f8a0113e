"""Does the lookup table predict real networks? Build them, measure them end to end, compare.

:func:`validate_lut` samples architectures uniformly from the table's search space (plus the named ones
that fit it), builds each as a real :class:`FBNet`, and measures it:

- latency: ``model(x)`` end to end (eval, inference mode, the table's device, thread count and batch
  size; on CUDA between two CUDA events, as the build times its parts) with the build's statistics:
  the architectures are measured in interleaved rounds (every architecture once per round, in a fresh
  random order, one untimed pass then the fastest of ``reps`` timed passes), each round scaled to the
  typical round's speed (the work is the same every round; ``round_speed``), and a network's latency
  is its median over rounds. This machine's speed changes between states in which networks differ in
  their relative latency, not only in level (README, "Latency lookup table"); so when the table kept
  the speed probe of each of its build's rounds, the medians are weighted to give the validation's
  rounds the build's mix of states (:func:`match_rounds`), and the figures over every round are
  reported beside them;
- FLOPs / parameters: counted on the whole network with ``torch.utils.flop_counter``.

It reports Pearson's r, Kendall's tau and the mean absolute percentage error (MAPE) between the table's
prediction (sum of ops + fixed parts) and the measurement, and draws a scatter plot.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Sequence
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

from .lookup_table_builder import (
    PROBES,
    LatencyLookupTable,
    LUTError,
    SpeedProbes,
    load_average,
    num_threads,
    round_speed,
    time_parts,
    use_allocator,
    weighted_percentiles,
)

__all__ = [
    "DEFAULT_VAL_MAX_ROUNDS",
    "DEFAULT_VAL_ROUNDS",
    "MATCH_PROBE",
    "MATCH_TOLERANCE",
    "build_network",
    "compare",
    "effective_rounds",
    "kendall_tau",
    "match_rounds",
    "measure_latencies",
    "measure_rounds",
    "named_archs",
    "plot_report",
    "probe_ratios",
    "round_medians",
    "sample_archs",
    "scale_rounds",
    "validate_lut",
]

logger = logging.getLogger(__name__)

# Rounds of a validation. In two 9-minute ``bench/bench_lut.py drift`` runs on this project's 2-core
# VM (SAVED_LOGS/benchmarks/lut_drift.log), a network's latency relative to the others varied
# between back-to-back validations with sd 1.00% and 1.29% at 15 rounds, 0.68% and 0.74% at 30, and
# two validations ranked the same 27 networks alike to Kendall tau 0.875 and 0.818 at worst at 15
# rounds, 0.920 and 0.880 at 30.
DEFAULT_VAL_ROUNDS = 30
# How far a validation matched to its build's conditions may go on measuring (see measure_latencies):
# at 224x224 here 90 rounds take about 6 minutes; in a 9-minute drift run every 6-minute window held
# rounds of both of this VM's compute states (SAVED_LOGS/benchmarks/lut_drift_raw_1.json).
DEFAULT_VAL_MAX_ROUNDS = 90


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
    """``spec``'s ops in the table's macro: its search space, input size, head and classifier width."""
    meta = lut.meta
    space = get_search_space(meta["search_space"])
    spec = ArchSpec(spec.name, spec.ops, space.name)  # the table's head, not a named arch's own
    model = FBNet(
        spec,
        space,
        cnt_classes=meta["cnt_classes"],
        input_size=meta["input_size"],
        head_channels=meta["head_channels"],
    )
    return model.to(device).eval()


def measure_rounds(
    models: Sequence[torch.nn.Module],
    x: torch.Tensor,
    rounds: int = DEFAULT_VAL_ROUNDS,
    reps: int = 3,
    warmup: int = 1,
    seed: int = 0,
    duration_s: float = 0.0,
    progress: bool = True,
    more: Callable[[SpeedProbes], bool] | None = None,
    max_rounds: int = 0,
) -> tuple[np.ndarray, np.ndarray, SpeedProbes]:
    """Every model's end-to-end latency (ms) in interleaved rounds, unscaled: ``ms[round, model]``.

    A round runs every model once, in a fresh random order: ``warmup`` untimed passes, then the
    fastest of ``reps`` timed ones; the speed probes are timed after it. Returns ``ms``, the seconds
    from the start at the end of each round (its probes included) and the probes. ``duration_s > 0``
    measures rounds until that many seconds have passed instead of a fixed number
    (``bench/bench_lut.py drift``). After ``rounds`` rounds, ``more(probes)`` can ask for further
    ones, up to ``max_rounds`` in all.
    """
    rng = np.random.default_rng(seed)
    clock = time.perf_counter
    rows, ends = [], []
    probes = SpeedProbes(x.device)
    total = None if duration_s > 0 else rounds

    def go_on() -> bool:
        if duration_s > 0:
            return clock() - start < duration_s
        if len(rows) < rounds:
            return True
        return more is not None and len(rows) < max_rounds and more(probes)

    with torch.inference_mode():
        for m in models:  # untimed warm-up of every network
            m(x)
        start = clock()
        bar = tqdm(desc="measuring rounds", total=total, disable=not progress)
        while go_on():
            row = np.zeros(len(models))
            for i in rng.permutation(len(models)):
                model = models[i]
                for _ in range(warmup):
                    model(x)
                passes = [time_parts([model], x, x.device, clock)[0] for _ in range(reps)]
                row[i] = min(passes) * 1e3
            rows.append(row)
            probes.measure()
            ends.append(clock() - start)
            bar.update()
        bar.close()
    return np.array(rows), np.array(ends), probes


def scale_rounds(
    ms: np.ndarray, normalize: bool = True, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``ms[round, model]`` with each round scaled to the typical round's speed, and those speeds.

    The work is the same every round, so ``round_speed`` gauges the machine in each (the typical
    round weighted by ``weights`` when given); with ``normalize`` off the times come back as they are.
    """
    speed = round_speed(ms, weights)
    return (ms / speed[:, None] if normalize else ms), speed


# Matching a validation's rounds to its build's conditions (match_rounds). This VM's compute probe
# takes one of two values (about 0.57 and 0.70 ms), the two states in which networks rank differently
# (README, "Latency lookup table"); rounds within 5% of each other are in the same state. The memory
# probe is not used: its median moved by up to 13% between a build and its validations within two
# hours, and matching on both probes (nearest round) gave single odd rounds much of the weight.
MATCH_PROBE = "compute_ms"
MATCH_TOLERANCE = 0.05


def match_rounds(
    reference: Sequence[float], measured: Sequence[float], tolerance: float = MATCH_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the measured rounds that give them the mix of conditions of the reference rounds.

    ``reference`` and ``measured`` are one probe time per round (a build's, a validation's; the
    compute probe of :class:`SpeedProbes`). Each reference round gives a weight of 1, shared equally
    by the measured rounds whose probe lies within ``tolerance`` of its own (relative), or given to
    the nearest one when none does. Returns the weights (they sum to the number of reference rounds)
    and, for each reference round, the relative distance to its nearest measured round.
    """
    ref = np.log(np.asarray(reference, float))
    got = np.log(np.asarray(measured, float))
    dist = np.abs(ref[:, None] - got[None, :])  # [reference, measured]
    near = dist <= np.log1p(tolerance)
    nearest = dist.argmin(axis=1)
    none_near = ~near.any(axis=1)
    near[none_near, nearest[none_near]] = True
    weights = (near / near.sum(axis=1, keepdims=True)).sum(axis=0)
    return weights, np.expm1(dist.min(axis=1))


def round_medians(
    ms: np.ndarray, normalize: bool, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each model's median and IQR over rounds (scaled, :func:`scale_rounds`), and the round speeds;
    with ``weights``, weighted ones (:func:`weighted_percentiles`)."""
    scaled, speed = scale_rounds(ms, normalize, weights)
    if weights is None:
        q25, q50, q75 = np.percentile(scaled, [25, 50, 75], axis=0)
    else:
        q25, q50, q75 = weighted_percentiles(scaled, weights, [25, 50, 75])
    return q50, q75 - q25, speed


def effective_rounds(weights: np.ndarray) -> float:
    """Kish's effective sample size: how many equally weighted rounds ``weights`` are worth."""
    return float(weights.sum() ** 2 / (weights**2).sum())


def measure_latencies(
    models: Sequence[torch.nn.Module],
    x: torch.Tensor,
    rounds: int = DEFAULT_VAL_ROUNDS,
    reps: int = 3,
    warmup: int = 1,
    normalize_rounds: bool = True,
    seed: int = 0,
    progress: bool = True,
    reference: dict[str, Sequence[float]] | None = None,
    max_rounds: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Median over interleaved rounds of each model's end-to-end latency (ms), and its IQR.

    Each round is first scaled to the typical round's speed (:func:`scale_rounds`), unless
    ``normalize_rounds`` is off. With ``reference`` (a table's ``probe_rounds``) on the CPU, the
    medians are weighted so that the rounds' mix of machine states matches the reference's
    (:func:`match_rounds`), and measuring goes on past ``rounds``, up to ``max_rounds``, while the
    weighted rounds are worth fewer than ``rounds / 2`` (:func:`effective_rounds`: a state the build
    saw often and the validation rarely rests on few rounds); ``info["all_rounds_ms"]`` then holds the
    plain medians over every round. ``info["raw"]`` holds every round's times and probes.
    """

    def too_few(probes: SpeedProbes) -> bool:
        if not probes.enabled:  # CUDA: nothing to match
            return False
        weights, _ = match_rounds(reference[MATCH_PROBE], probes.samples[MATCH_PROBE])
        return effective_rounds(weights) < rounds / 2

    ms, _, probes = measure_rounds(
        models, x, rounds, reps, warmup, seed, progress=progress,
        more=too_few if reference else None, max_rounds=max_rounds,
    )  # fmt: skip
    q50, iqr, speed = round_medians(ms, normalize_rounds)
    info: dict[str, Any] = {
        "rounds_measured": len(ms),
        "round_speed_min": round(float(speed.min()), 3),
        "round_speed_max": round(float(speed.max()), 3),
    }
    if probes.enabled:
        info["probes"] = probes.summary()
    if reference and probes.enabled:
        weights, dist = match_rounds(reference[MATCH_PROBE], probes.samples[MATCH_PROBE])
        info["all_rounds_ms"] = q50
        q50, iqr, _ = round_medians(ms, normalize_rounds, weights)
        info["matched"] = {
            "probe": MATCH_PROBE,
            "tolerance_percent": MATCH_TOLERANCE * 100,
            "reference_rounds": len(dist),
            "reference_rounds_without_match": int(np.sum(dist > MATCH_TOLERANCE)),
            "rounds_used": int(np.count_nonzero(weights)),
            "effective_rounds": round(effective_rounds(weights), 1),
        }
    info["raw"] = {"ms": np.round(ms, 4).tolist(), "probes": probes.per_round()}
    return q50, iqr, info


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


def probe_ratios(
    build: dict | None, now: dict | None, suffix: str = "vs_build"
) -> dict[str, float]:
    """Probe times of ``now`` over ``build``'s (> 1: slower now), as ``probe_<name>_<suffix>``.

    ``build`` and ``now`` are probe summaries (a table's ``meta["probes"]``, a validation's); empty
    if either is missing.
    """
    if not build or not now:
        return {}
    return {
        f"probe_{name[: -len('_ms')]}_{suffix}": round(now[name] / build[name], 3)
        for name in PROBES
        if name in build and name in now
    }


def _conditions_differ(ratios: dict[str, float], tolerance: float = 0.1) -> list[str]:
    """The probes that ran more than ``tolerance`` faster or slower than during the build."""
    differ = [k for k, v in ratios.items() if abs(v - 1.0) > tolerance]
    for name in differ:
        logger.warning(
            "%s = %.2f: the machine ran at another speed than while the table was built, so this "
            "validation's errors include that difference",
            name,
            ratios[name],
        )
    return differ


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
    match_conditions: bool = True,
    max_rounds: int = DEFAULT_VAL_MAX_ROUNDS,
) -> dict[str, Any]:
    """Measure ``num_archs`` random (+ named) architectures and compare them with the table.

    With ``match_conditions`` (and a CPU table that kept its per-round speed probes) the headline
    figures compare the table with the validation's rounds weighted to the build's mix of conditions
    (:func:`match_rounds`; measuring goes on past ``rounds``, up to ``max_rounds``, while too few
    rounds were made in those conditions); the figures over every round are reported beside them,
    as ``all_rounds``.

    The device, thread count and allocator setting (:func:`use_allocator`; tables that predate it
    were measured with ``"default"``) default to the table's own; validating under other settings is
    allowed, with a warning. Counted tables (FLOPs, parameters) are always counted on the CPU's meta
    device.
    """
    meta = lut.meta
    if rounds < 1:
        raise ValueError(f"a validation needs at least 1 measuring round, got {rounds}")
    if match_conditions and max_rounds < rounds:
        raise ValueError(f"max_rounds ({max_rounds}) must be at least rounds ({rounds})")
    specs = sample_archs(lut, num_archs, seed) + (named_archs(lut) if include_named else [])
    if len(specs) < 3:
        raise ValueError(f"need at least 3 architectures to compare, got {len(specs)}")
    cost = lut.cost
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
    if cost == "latency" and meta.get("device") not in (None, dev.type):
        logger.warning("validating on %s a table measured on %s", dev.type, meta["device"])
    if threads is None:
        threads = meta.get("threads") or torch.get_num_threads()
    elif cost == "latency" and meta.get("threads") and threads != meta["threads"]:
        logger.warning(
            "validating with %d threads a table measured with %d: expect a mismatch",
            threads,
            meta["threads"],
        )
    if cost == "latency":
        built_with = lut.allocator
        allocator = use_allocator(allocator or built_with)
        if allocator != built_with:
            logger.warning(
                "validating with allocator %s a table measured with %s: expect a mismatch",
                allocator,
                built_with,
            )
    with num_threads(threads if dev.type == "cpu" else None):
        return _validate(
            lut, specs, dev, threads, seed, rounds, reps, normalize_rounds, allocator, progress,
            match_conditions, max_rounds,
        )  # fmt: skip


def _validate(
    lut, specs, dev, threads, seed, rounds, reps, normalize_rounds, allocator, progress,
    match_conditions, max_rounds,
):  # fmt: skip
    start = time.perf_counter()
    meta, cost, num_archs = lut.meta, lut.cost, sum(s.name.startswith("random_") for s in specs)
    torch.manual_seed(seed)
    if cost != "latency":  # counting needs shapes only: build on the meta device
        dev = torch.device("meta")
    with dev:
        models = [build_network(lut, spec, dev) for spec in specs]
    batch = meta.get("batch_size", 1)
    size = meta["input_size"]
    info: dict[str, Any] = {}
    raw, all_rounds = None, None
    if cost == "latency":
        x = torch.randn(batch, 3, size, size, device=dev)
        reference = meta.get("probe_rounds") if match_conditions else None
        if match_conditions and reference is None and dev.type == "cpu":
            logger.warning(
                "the table kept no per-round speed probes (built before they were recorded): "
                "comparing it with every round, whatever the machine's state"
            )
        load_before = load_average()
        measured, spread, info = measure_latencies(
            models, x, rounds, reps, 1, normalize_rounds, seed, progress, reference, max_rounds
        )
        raw, all_rounds = info.pop("raw"), info.pop("all_rounds_ms", None)
        matched = info.get("matched")
        if matched and matched["reference_rounds_without_match"] > matched["reference_rounds"] / 2:
            logger.warning(
                "%d of the build's %d rounds ran in conditions that no validation round met (compute "
                "probe more than %d%% away): the matched figures rest on other conditions",
                matched["reference_rounds_without_match"],
                matched["reference_rounds"],
                round(MATCH_TOLERANCE * 100),
            )
        info.update(load_average_before=load_before, load_average_after=load_average())
        ratios = probe_ratios(meta.get("probes"), info.get("probes"))
        # flagged, not corrected: a probe is not a model of how each op depends on the machine's state
        info.update(ratios, conditions_differ=_conditions_differ(ratios))
    elif cost == "flops":
        measured = np.array([_count_macs(m, size, batch) / 1e6 for m in models])
        spread = np.zeros(len(models))
    else:
        measured = np.array([count_params(m) / 1e6 for m in models])
        spread = np.zeros(len(models))
    predicted = [lut.predict(spec.ops) for spec in specs]
    metrics = compare(predicted, measured)
    info["match_conditions"] = all_rounds is not None
    if all_rounds is not None:
        info["all_rounds"] = {k: round(v, 4) for k, v in compare(predicted, all_rounds).items()}
    else:
        all_rounds = [None] * len(specs)
    archs = [
        {
            "name": spec.name,
            "ops": list(spec.ops),
            "predicted": round(float(p), 5),
            "measured": round(float(m), 5),
            "measured_iqr": round(float(s), 5),
            "error_percent": round(float((p - m) / m * 100.0), 3),
            **({"measured_all_rounds": round(float(a), 5)} if a is not None else {}),
        }
        for spec, p, m, s, a in zip(specs, predicted, measured, spread, all_rounds)
    ]
    report = {
        **{k: round(v, 4) for k, v in metrics.items()},
        "num_archs": len(specs),
        "num_random": num_archs,
        "num_named": len(specs) - num_archs,
        "cost": cost,
        "unit": meta.get("unit"),
        "lut_path": str(lut.path) if lut.path else None,
        "lut_meta": {
            k: meta.get(k)
            for k in (
                "search_space",
                "input_size",
                "batch_size",
                "device",
                "device_name",
                "threads",
                "date",
                "method",
                "allocator",
                "rounds",
                "build_time_s",
            )
        },  # fmt: skip
        "validation": {
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": dev.type,
            "threads": threads if dev.type == "cpu" else None,
            "seed": seed,
            "rounds": rounds if cost == "latency" else None,
            "max_rounds": max_rounds if cost == "latency" and match_conditions else None,
            "reps": reps if cost == "latency" else None,
            "normalize_rounds": normalize_rounds,
            "allocator": allocator if cost == "latency" else None,
            "torch_version": torch.__version__,
            "time_s": round(time.perf_counter() - start, 1),
            **info,
        },
        "archs": archs,
    }
    if raw is not None:
        report["raw"] = raw  # every round's times [round][arch] and probes, for re-analysis
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
