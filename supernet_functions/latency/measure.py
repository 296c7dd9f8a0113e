"""Measure a latency lookup table (or count a FLOPs / parameter one) for a search space.

How latency is measured (:func:`build_lut`), and why:

- **In the network, not in isolation.** An op timed alone, on the same input again and again, finds its
  weights and input in cache and its output buffer recycled; inside a network it reads the previous
  layer's fresh output and its own weights after 21 other layers have gone through the cache. So each
  build *round* assembles real networks from one pre-built block per (layer, op) and times every part of
  the forward pass (stem, each block, head, pool, classifier) in place, with a clock read between parts.
  The parts of one pass add up to that pass, so the table's sums are whole-network latencies.
- **Every entry in every round.** A round is a Latin square: ``K`` networks (``K`` candidate ops), where
  layer ``l`` of network ``j`` runs op ``perm_l[j]`` for a fresh random permutation ``perm_l``, so each
  (layer, op) runs exactly once per round next to random neighbours. Every round does the same work, so
  its times gauge the machine's speed: each round is scaled to the typical round's speed
  (:func:`round_speed`, ``normalize_rounds``), and an entry is the median over rounds. A slow phase of
  the machine that lasts less than half the build then moves no entry.
- eval mode, ``torch.inference_mode()``, a fixed thread count, an untimed warm-up round (oneDNN builds
  its kernels on first use), each network run ``warmup`` times untimed and ``reps`` times timed (the
  fastest rep of each part is kept: other load on the machine only ever adds time); on CUDA, events
  between the parts and one synchronisation per pass (:func:`time_parts`). The validation times whole
  networks with the same statistics (:mod:`supernet_functions.latency.validate`).
- **The user's process.** By default the C allocator is left as it is, so the table predicts what
  ``get_model(...)(x)`` costs in an ordinary Python process, page faults of freed activations included;
  ``allocator="keep_heap"`` (:func:`use_allocator`) measures a process that keeps freed memory in its
  heap, as a deployment runtime's arena does. The table records the setting and its validation uses it.

The table itself (file format, checks, queries) is :mod:`supernet_functions.latency.table`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.fbnet_builder import FBNet
from fbnet_building_blocks.search_space import SearchSpace, get_search_space
from fbnet_building_blocks.structure import DEFAULT_STRUCTURE, Structure
from general_functions.utils import resolve_device

# LatencyLookupTable, LUTError and default_lut_path are re-exported for the callers that import them
# from here.
from supernet_functions.latency.table import (
    COSTS,
    FIXED_PARTS,
    FORMAT_VERSION,
    LatencyLookupTable,
    LUTError,
    default_cnt_classes,
    default_lut_path,
    lut_key,
)

__all__ = [
    "ALLOCATORS",
    "DEFAULT_TIME_BUDGET_S",
    "LatencyLookupTable",
    "LUTError",
    "build_cost_table",
    "build_lut",
    "default_lut_path",
    "device_name",
    "load_average",
    "network_parts",
    "num_threads",
    "round_speed",
    "time_parts",
    "use_allocator",
]

logger = logging.getLogger(__name__)

# A build's default length: at most 5 minutes, and the longer a build, the more of a machine's faster
# and slower phases its medians average (docs/latency_tables.md).
DEFAULT_TIME_BUDGET_S = 270.0


# ---------------------------------------------------------------------- measurement helpers
def device_name(device: torch.device) -> str:
    """A human name of the hardware: the GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the OS has none): a busy machine skews timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


ALLOCATORS = ("default", "keep_heap")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_allocator_in_effect = "default"


def use_allocator(name: str) -> str:
    """Set how this process's C allocator handles freed memory; returns the setting in effect.

    ``"default"`` (the build's default) leaves glibc as it is, as in a user's ordinary process: large
    freed blocks go back to the OS, so an eager forward pass at 224x224 maps and faults in its
    activations again op after op, and the table includes that cost. ``"keep_heap"`` sets glibc's mmap and trim thresholds to
    1 GiB (``mallopt``), so freed blocks stay in the heap for reuse, as a deployment runtime's memory
    arena does (page faults per pass with each setting: docs/latency_tables.md). It cannot be undone within a
    process: ``"default"`` afterwards warns and returns ``"keep_heap"``. Without glibc nothing changes
    and the result is ``"default"``.
    """
    global _allocator_in_effect
    if name not in ALLOCATORS:
        raise ValueError(f"unknown allocator {name!r}: use one of {', '.join(ALLOCATORS)}")
    if name == "default":
        if _allocator_in_effect != "default":
            logger.warning("this process already keeps freed memory in its heap (keep_heap)")
        return _allocator_in_effect
    if _allocator_in_effect == "keep_heap":
        return _allocator_in_effect
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such symbol, or no process handle (Windows)
        logger.warning("no glibc mallopt here: the allocator stays as it is")
        return _allocator_in_effect
    if mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1:
        _allocator_in_effect = "keep_heap"
    else:
        logger.warning("glibc refused the keep_heap thresholds: the allocator stays as it is")
    return _allocator_in_effect


@contextlib.contextmanager
def num_threads(threads: int | None):
    """Use ``threads`` intra-op CPU threads inside the block, then restore the previous count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def network_parts(model: FBNet) -> tuple[dict[str, nn.Module], list[nn.Module]]:
    """The fixed parts and searched blocks of a built :class:`FBNet`, in forward order.

    Running ``stem, *blocks, head, pool, classifier`` in sequence computes exactly ``model(x)``.
    """
    fixed = {
        "stem": model.stem,
        "head": model.head,
        "pool": nn.Sequential(model.pool, nn.Flatten(1)),
        "classifier": nn.Sequential(model.dropout, model.classifier),  # dropout: a no-op in eval
    }
    return fixed, list(model.blocks)


def time_parts(
    parts: Sequence[nn.Module], x: torch.Tensor, device: torch.device, clock: Callable[[], float]
) -> list[float]:
    """Run ``parts`` in sequence, timing each; seconds per part, which add up to the whole pass.

    CPU: the clock is read between parts. CUDA: a CUDA event is recorded between parts and the GPU is
    synchronised once, after the last part, so the kernels queue as in a normal forward pass (launching
    overlaps running). A part's time is its span of the GPU's timeline, including the time the GPU
    waits for the part's launches; a synchronisation after every part would instead add each part's
    launch and round-trip time in full, which a batch-1 network on a GPU never pays in sequence.
    """
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(parts) + 1)]
        events[0].record()
        for part, event in zip(parts, events[1:]):
            x = part(x)
            event.record()
        events[-1].synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]
    times = []
    t0 = clock()
    for part in parts:
        x = part(x)
        t1 = clock()
        times.append(t1 - t0)
        t0 = t1
    return times


def _networks_and_meta(
    search_space, input_size, batch_size, cnt_classes, structure, candidate_ops, device, cost
) -> tuple[dict[str, FBNet], dict[str, Any]]:
    """One network per op using that op at every layer (the pool of blocks a build draws from), on
    ``device``, and the table's header; arguments left as ``None`` take the search space's defaults.
    The networks have ``structure``'s blocks and head, and the header records it."""
    space = get_search_space(search_space)
    input_size = input_size or space.input_size
    cnt_classes = cnt_classes or default_cnt_classes(input_size)
    structure = structure or DEFAULT_STRUCTURE
    head_channels = structure.head_channels
    nets = {}
    with device:
        for op in candidate_ops or space.candidate_ops:
            spec = ArchSpec(f"all_{op}", (op,) * space.num_layers, space.name, head_channels)
            net = FBNet(
                spec,
                space,
                cnt_classes,
                input_size,
                head_channels=head_channels,
                head=structure.head,
                dw_bn_relu=structure.dw_bn_relu,
            )
            nets[op] = net.to(device).eval()
    shapes = [
        [s.in_channels, s.out_channels, s.stride, s.input_hw]
        for s in space.layer_shapes(input_size)
    ]
    meta = {
        "format_version": FORMAT_VERSION,
        "cost": cost,
        "unit": COSTS[cost],
        "statistic": "median",
        "search_space": space.name,
        "input_size": input_size,
        "batch_size": batch_size,
        "cnt_classes": cnt_classes,
        "head_channels": head_channels,
        "structure": structure.to_dict(),
        "num_layers": space.num_layers,
        "candidate_ops": list(nets),
        "layer_shapes": shapes,
        "layer_keys": [lut_key("*", *shape) for shape in shapes],
        "torch_version": str(torch.__version__),  # a plain str: checkpoints hold this header
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return nets, meta


def round_speed(times: np.ndarray) -> np.ndarray:
    """How slow each round was, relative to the typical round: ``times[round, item]`` -> ``[round]``.

    Every round times the same items, so an item's time over its median across rounds shows the
    machine's speed in that round; the median over items ignores a burst that hit only a few of them.
    """
    return np.median(times / np.median(times, axis=0), axis=1)


def _stats(values: Sequence[float]) -> dict[str, float]:
    q25, q50, q75 = np.percentile(np.asarray(values), [25, 50, 75])
    return {"median": float(q50), "iqr": float(q75 - q25), "n": len(values)}


def build_lut(
    search_space: str | SearchSpace = "fbnet",
    input_size: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    threads: int = 2,
    *,
    rounds: int = 0,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    min_rounds: int = 8,
    max_rounds: int = 400,
    reps: int = 3,
    warmup: int = 1,
    normalize_rounds: bool = True,
    cnt_classes: int | None = None,
    structure: Structure | None = None,
    candidate_ops: Sequence[str] | None = None,
    seed: int = 0,
    allocator: str = "default",
    progress: bool = True,
) -> LatencyLookupTable:
    """Measure the latency of every candidate op at every layer, and of the fixed parts (ms).

    Ops are timed inside whole networks, a Latin-square round at a time (see the module docstring).
    ``rounds=0`` measures rounds until ``time_budget_s`` has passed since the start (at least
    ``min_rounds``, at most ``max_rounds``). ``allocator`` is set for the rest of the process
    (:func:`use_allocator`) and recorded in the meta.
    """
    dev = resolve_device(str(device))
    allocator = use_allocator(allocator)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    nets, meta = _networks_and_meta(
        search_space, input_size, batch_size, cnt_classes, structure, candidate_ops, dev,
        "latency",
    )  # fmt: skip
    meta.update(
        device=dev.type,
        device_name=device_name(dev),
        threads=threads if dev.type == "cpu" else None,
        method="in_network",
        allocator=allocator,
        seed=seed,
        host_cpus=os.cpu_count(),
        load_average_before=load_average(),
    )
    if dev.type == "cpu" and (meta["load_average_before"] or 0) > 0.5:
        logger.warning(
            "load average is %.2f before measuring: other work on this machine will skew the "
            "table (the round scaling and medians absorb short bursts only)",
            meta["load_average_before"],
        )
    size = meta["input_size"]
    x = torch.randn(batch_size, 3, size, size, device=dev)
    budget = (rounds, time_budget_s, min_rounds, max_rounds, start)
    with num_threads(threads if dev.type == "cpu" else None):
        layers, fixed, info = _measure_rounds(
            nets, x, rng, budget, reps, warmup, normalize_rounds, progress
        )
    meta.update(info)
    meta["build_time_s"] = round(time.perf_counter() - start, 1)
    meta["load_average_after"] = load_average()
    lut = LatencyLookupTable(meta, layers, fixed)
    lut.check_structure()
    logger.info("built %s in %.1f s", lut.describe(), meta["build_time_s"])
    return lut


def _measure_rounds(nets, x, rng, budget, reps, warmup, normalize_rounds, progress):
    """Latin-square rounds until the budget is spent; each entry's statistics over the scaled rounds."""
    rounds, time_budget_s, min_rounds, max_rounds, start = budget
    candidate_ops = list(nets)
    fixed_parts, _ = network_parts(nets[candidate_ops[0]])
    blocks = {op: network_parts(net)[1] for op, net in nets.items()}
    num_layers, k = len(blocks[candidate_ops[0]]), len(candidate_ops)
    clock = time.perf_counter

    def run_round() -> tuple[np.ndarray, np.ndarray]:
        """One Latin square: per (layer, op) time and per fixed part and network (ms)."""
        perms = np.stack([rng.permutation(k) for _ in range(num_layers)])  # [layer, network]
        op_ms = np.zeros((num_layers, k))
        fixed_ms = np.zeros((len(FIXED_PARTS), k))
        for j in rng.permutation(k):
            choice = perms[:, j]
            parts = [
                fixed_parts["stem"],
                *(blocks[candidate_ops[c]][li] for li, c in enumerate(choice)),
                fixed_parts["head"],
                fixed_parts["pool"],
                fixed_parts["classifier"],
            ]
            for _ in range(warmup):
                time_parts(parts, x, x.device, clock)
            passes = np.array([time_parts(parts, x, x.device, clock) for _ in range(reps)]) * 1e3
            per_part = passes.min(axis=0)  # other load only ever adds time: the fastest rep
            op_ms[np.arange(num_layers), choice] = per_part[1 : 1 + num_layers]
            fixed_ms[:, j] = [per_part[0], *per_part[1 + num_layers :]]
        return op_ms, fixed_ms

    with torch.inference_mode():
        run_round()  # untimed warm-up round: every kernel gets built once
        t0 = clock()
        results = [run_round()]
        round_s = clock() - t0
        by_budget = rounds <= 0
        if by_budget:  # an estimate for the progress bar; the budget itself decides when to stop
            left = time_budget_s - (clock() - start)
            rounds = int(np.clip(left / max(round_s, 1e-6), min_rounds, max_rounds))
        bar = tqdm(desc="LUT rounds", disable=not progress, initial=1, total=rounds)
        while len(results) < (max_rounds if by_budget else rounds):
            if by_budget and len(results) >= min_rounds and clock() - start >= time_budget_s:
                break  # a busy machine slows rounds down: stop on time, not on the estimate
            results.append(run_round())
            bar.update()
        bar.close()
    op_ms = np.stack([r[0] for r in results])  # [round, layer, op]
    fixed_ms = np.stack([r[1] for r in results])  # [round, part, network]
    speed = round_speed(
        np.concatenate([op_ms.reshape(len(op_ms), -1), fixed_ms.reshape(len(fixed_ms), -1)], 1)
    )
    scale = 1.0 / speed if normalize_rounds else np.ones_like(speed)
    op_ms = op_ms * scale[:, None, None]
    fixed_ms = np.median(fixed_ms, axis=2) * scale[:, None]  # [round, part]
    layers = [
        {op: _stats(op_ms[:, li, c]) for c, op in enumerate(candidate_ops)}
        for li in range(num_layers)
    ]
    fixed = {name: _stats(fixed_ms[:, i]) for i, name in enumerate(FIXED_PARTS)}
    info = {
        "rounds": len(results),
        "reps": reps,
        "warmup": warmup,
        "round_time_s": round(round_s, 3),
        "normalize_rounds": normalize_rounds,
        "round_speed": {  # round time / median round time: > 1 means a slow round
            "min": round(float(speed.min()), 3),
            "max": round(float(speed.max()), 3),
            "frac_slower_10pct": round(float(np.mean(speed > 1.1)), 3),
        },
    }
    return layers, fixed, info


# ---------------------------------------------------------------------- proxy costs
def _module_cost(module: nn.Module, x: torch.Tensor, cost: str) -> float:
    """Multiply-adds per image (``torch.utils.flop_counter``, millions) or parameters (millions)."""
    if cost == "params":
        return sum(p.numel() for p in module.parameters()) / 1e6
    counter = FlopCounterMode(display=False)
    with counter:
        module(x)
    return counter.get_total_flops() / 2 / x.shape[0] / 1e6  # one multiply-add = 2 FLOPs


def build_cost_table(
    cost: str,
    search_space: str | SearchSpace = "fbnet",
    input_size: int | None = None,
    batch_size: int = 1,
    cnt_classes: int | None = None,
    structure: Structure | None = None,
    candidate_ops: Sequence[str] | None = None,
) -> LatencyLookupTable:
    """A FLOPs (multiply-adds) or parameter table in the latency table's format; no timing."""
    if cost not in ("flops", "params"):
        raise ValueError(f"build_cost_table makes 'flops' or 'params' tables, not {cost!r}")
    meta_device = torch.device("meta")  # shapes only: counting needs no memory and no compute
    nets, meta = _networks_and_meta(
        search_space, input_size, batch_size, cnt_classes, structure, candidate_ops,
        meta_device, cost,
    )  # fmt: skip
    size, first = meta["input_size"], next(iter(nets.values()))
    fixed_parts, _ = network_parts(first)
    x = torch.zeros(batch_size, 3, size, size, device=meta_device)
    layers: list[dict[str, dict[str, float]]] = [{} for _ in range(meta["num_layers"])]
    with torch.inference_mode():
        for op, net in nets.items():
            h = fixed_parts["stem"](x)
            for li, block in enumerate(network_parts(net)[1]):
                layers[li][op] = {"median": _module_cost(block, h, cost), "iqr": 0.0, "n": 1}
                h = block(h)
        fixed = {}
        h = x
        for name in FIXED_PARTS:
            if name == "head":
                h = first.blocks(h)
            fixed[name] = {"median": _module_cost(fixed_parts[name], h, cost), "iqr": 0.0, "n": 1}
            h = fixed_parts[name](h)
    meta.update(device="none", device_name="counted, not timed", method="flop_counter")
    lut = LatencyLookupTable(meta, layers, fixed)
    lut.check_structure()
    return lut
