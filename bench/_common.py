"""Shared helpers of the benchmark scripts: alternating timed rounds, peak memory, summaries, JSON.

Every script compares variants inside one process and alternates them round by round
(``A B C  A B C ...``), so a slow phase of a shared machine hits every variant alike; it reports the
median and the range (min..max) of each variant's rounds and of the per-round ratios to the baseline.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "environment",
    "peak_memory_mb",
    "summarise",
    "paired_ratios",
    "preset_supernet",
    "print_json",
    "sync",
    "tensor_bytes",
    "time_rounds",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
    }
    try:
        env["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        env["cpu"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return env


def time_rounds(
    variants: dict[str, Callable[[], int]],
    rounds: int,
    min_time_s: float,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Items per second of every variant, per round, alternating variants within each round.

    ``variants[name]()`` runs one step and returns how many items it processed. In a round a variant
    repeats its step until ``min_time_s`` has passed (at least once); its figure for the round is
    items / seconds.
    """
    out: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, step in variants.items():
            sync(device)
            items, start = 0, time.perf_counter()
            while True:
                items += step()
                sync(device)
                elapsed = time.perf_counter() - start
                if elapsed >= min_time_s:
                    break
            out[name].append(items / elapsed)
            log(f"  round {r + 1}/{rounds}  {name:<24} {items / elapsed:10.1f} items/s")
    return out


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Median and range of a variant's rounds."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "rounds": len(values),
    }


def paired_ratios(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """``values[i] / baseline[i]`` per round (the same round of the same process): median and range."""
    return summarise([v / b for v, b in zip(values, baseline)])


def peak_memory_mb(step: Callable[[], Any], device: torch.device, static_bytes: int = 0) -> float:
    """Peak tensor memory of one call of ``step`` in MB, plus ``static_bytes`` held before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the torch profiler's allocator events, summed in
    time order (the most bytes allocated and not yet freed since the profile started; oneDNN's private
    scratch buffers are not counted).
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    total = peak = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    return (static_bytes + peak) / 2**20


def tensor_bytes(*objects: Any) -> int:
    """Bytes held by the tensors of modules, optimizers (their state) and plain tensors."""
    seen, total = set(), 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        key = (str(t.device), t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                add(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for t in state.values():
                    if isinstance(t, torch.Tensor):
                        add(t)
        elif isinstance(obj, torch.Tensor):
            add(obj)
    return total


def preset_supernet(weight_sharing: bool = True) -> torch.nn.Module:
    """The ``cpu_cifar10`` preset's supernet on the CPU, from seed 0, in training mode: ``fbnet`` at
    32x32, BN scales U(0, 1), the costs and block structure of the committed 32x32 table
    (``luts/fbnet_32_cpu.json``), made by ``prepare_supernet`` with the search's defaults."""
    from pathlib import Path

    from supernet_functions.model_supernet import StochasticSuperNet
    from supernet_functions.sampling import load_table
    from supernet_functions.speed import prepare_supernet

    lut = load_table(Path(__file__).resolve().parent.parent / "luts" / "fbnet_32_cpu.json")
    torch.manual_seed(0)
    net = StochasticSuperNet(
        "fbnet",
        lut,
        10,
        32,
        bn_init="uniform",
        structure=lut.structure,
        weight_sharing=weight_sharing,
    )
    return prepare_supernet(net, torch.device("cpu")).train()


def print_json(result: dict[str, Any]) -> None:
    """The script's result as its last stdout line."""
    print(json.dumps(result, sort_keys=False), flush=True)
