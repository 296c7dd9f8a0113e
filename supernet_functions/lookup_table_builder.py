"""The latency lookup table (LUT): the cost of every candidate op at every searched layer.

FBNet predicts a network's latency as the sum of its ops' latencies (paper Eq. 4):
``LAT(a) = sum_l LAT(op chosen at layer l)``. This table also holds the fixed parts (stem, head, pool,
classifier), so the sum predicts a whole network, not only its searched layers.

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
  its times are a speed gauge of the machine: each round is scaled to the typical round's speed
  (:func:`round_speed`, ``normalize_rounds``), and an entry is the median over rounds. A slow phase
  of the machine that lasts less than half the build then moves no entry.
- eval mode, ``torch.inference_mode()``, a fixed thread count, an untimed warm-up round (oneDNN builds
  its kernels on first use), each network run ``warmup`` times untimed and ``reps`` times timed (the
  fastest rep of each part is kept: other load on the machine only ever adds time); on CUDA, events
  between the parts and one synchronisation per pass (:func:`time_parts`). The validation times whole
  networks with the same statistics (:mod:`supernet_functions.lut_validation`).
- **No page faults in the timings.** glibc hands large activations back to the OS after each op, so an
  eager pass pays for mapping them again; :func:`use_allocator` (``keep_heap``, the default) keeps
  them in the heap, as a deployment runtime's arena would, and the table records the setting so that
  its validation uses the same.

:func:`measure_op_latency` times a single module in isolation with ``torch.utils.benchmark``; it serves
quick checks and the ``isolated`` method, kept for comparison.

JSON layout (``format_version`` 1)::

    {"meta": {"format_version", "cost": "latency"|"flops"|"params", "unit", "statistic": "median",
              "search_space", "input_size", "batch_size", "cnt_classes", "head_channels", "num_layers",
              "candidate_ops", "layer_shapes": [[in_ch, out_ch, stride, input_hw], ...],
              "device", "device_name", "torch_version", "threads", "date", "method", "allocator",
              "probes", "probe_rounds": {"memory_ms": [...], "compute_ms": [...]} (one per round), ...},
     "fixed": {"stem": {"median": ms, "iqr": ms, "n": k}, "head": {...}, "pool": {...},
               "classifier": {...}},
     "layers": [{"ir_k3_e1": {"median": ms, "iqr": ms, "n": k}, ...}, ...]}   # one per searched layer
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.fbnet_builder import FBNet
from fbnet_building_blocks.registry import OPS
from fbnet_building_blocks.search_space import SearchSpace, get_search_space
from general_functions.io_utils import atomic_write_json
from general_functions.utils import resolve_device

__all__ = [
    "ALLOCATORS",
    "COSTS",
    "DEFAULT_TIME_BUDGET_S",
    "FIXED_PARTS",
    "FORMAT_VERSION",
    "PROBES",
    "LUTError",
    "LatencyLookupTable",
    "build_cost_table",
    "build_lut",
    "default_cnt_classes",
    "default_lut_path",
    "device_name",
    "load_average",
    "lut_key",
    "measure_op_latency",
    "network_parts",
    "num_threads",
    "round_speed",
    "SpeedProbes",
    "time_parts",
    "use_allocator",
    "weighted_percentiles",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# A build's default length. This project's 2-core VM switches between faster and slower states
# every minute or so; the longer a build, the more of them its medians average. In two 9-minute
# ``bench/bench_lut.py drift`` runs the speed level of windows of 150 s spread with sd 4.2% and
# 3.1%, of 270 s with sd 2.4% and 0.96% (SAVED_LOGS/benchmarks/lut_drift.log). 270 s keeps a build
# within 5 minutes.
DEFAULT_TIME_BUDGET_S = 270.0
FIXED_PARTS: tuple[str, ...] = ("stem", "head", "pool", "classifier")
# The speed probes timed after every round (SpeedProbes), by their keys in tables and reports.
PROBES: tuple[str, ...] = ("memory_ms", "compute_ms")
# cost -> unit. FLOPs are counted as multiply-adds, as the paper does.
COSTS: dict[str, str] = {"latency": "ms", "flops": "M multiply-adds", "params": "M parameters"}


class LUTError(ValueError):
    """A lookup table that is corrupt, truncated or does not fit the search being run."""


def lut_key(op: str, in_channels: int, out_channels: int, stride: int, input_hw: int) -> str:
    """A readable, stable name for one entry: ``ir_k3_e6|16->24|s2|112``."""
    return f"{op}|{in_channels}->{out_channels}|s{stride}|{input_hw}"


LUT_DIR = Path(__file__).resolve().parent.parent / "luts"


def default_lut_path(search_space: str, input_size: int, cost: str = "latency") -> Path | None:
    """The committed table for a search space and input size (``luts/<space>_<size>_cpu.json`` for
    latency, ``luts/<space>_<size>_<cost>.json`` otherwise), or ``None`` when there is none.

    The committed latency tables were measured on this project's 2-core CPU; on other hardware,
    build your own (``--train_or_sample build_lut``).
    """
    suffix = "cpu" if cost == "latency" else cost
    path = LUT_DIR / f"{search_space}_{input_size}_{suffix}.json"
    return path if path.is_file() else None


def default_cnt_classes(input_size: int) -> int:
    """Classifier width when none is given: CIFAR-10's 10 up to 64x64 inputs, ImageNet's 1000 above."""
    return 10 if input_size <= 64 else 1000


class LatencyLookupTable:
    """Per-layer, per-op costs (``unit`` in ``meta``, milliseconds for latency) plus fixed parts."""

    def __init__(
        self,
        meta: dict[str, Any],
        layers: list[dict[str, dict[str, float]]],
        fixed: dict[str, dict[str, float]] | None = None,
        path: str | Path | None = None,
    ) -> None:
        self.meta = dict(meta)
        self.layers = layers
        self.fixed = fixed or {}
        self.path = Path(path) if path else None

    @classmethod
    def from_latencies(
        cls,
        search_space: str,
        latencies: Sequence[dict[str, float]],
        fixed_ms: dict[str, float] | None = None,
        **meta: Any,
    ) -> LatencyLookupTable:
        """A table from plain numbers (tests, hand-made tables): ``latencies[layer][op] = ms``."""
        layers = [{op: {"median": float(v), "iqr": 0.0} for op, v in d.items()} for d in latencies]
        fixed = {k: {"median": float(v), "iqr": 0.0} for k, v in (fixed_ms or {}).items()}
        meta = {"search_space": search_space, "statistic": "median", "unit": "ms", **meta}
        return cls(meta, layers, fixed)

    # ------------------------------------------------------------------ queries
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def cost(self) -> str:
        return self.meta.get("cost", "latency")

    @property
    def allocator(self) -> str:
        """The C allocator setting it was measured with; tables that predate it: ``"default"``."""
        return self.meta.get("allocator", "default")

    @property
    def fixed_cost(self) -> float:
        return sum(v["median"] for v in self.fixed.values())

    def query(self, layer: int, op: str) -> float:
        """The cost of ``op`` at searched layer ``layer``; a missing entry names the table."""
        try:
            return self.layers[layer][op]["median"]
        except (IndexError, KeyError):
            where = f" in {self.path}" if self.path else ""
            raise KeyError(f"no entry for op {op!r} at layer {layer}{where}") from None

    def latency_vector(self, layer: int, ops: Sequence[str]) -> torch.Tensor:
        """Costs of ``ops`` at ``layer``, in that order (the supernet's per-layer buffer)."""
        return torch.tensor([self.query(layer, op) for op in ops], dtype=torch.float32)

    def predict(self, ops: Sequence[str], include_fixed: bool = True) -> float:
        """Predicted cost of a whole architecture: the sum of its ops (+ the fixed parts)."""
        if len(ops) != self.num_layers:
            raise LUTError(f"architecture has {len(ops)} layers, the table has {self.num_layers}")
        total = sum(self.query(i, op) for i, op in enumerate(ops))
        return total + (self.fixed_cost if include_fixed else 0.0)

    def fastest_ops(self) -> list[str]:
        """The cheapest op of every layer (a quick look at what the table favours)."""
        return [min(d, key=lambda op: d[op]["median"]) for d in self.layers]

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "fixed": self.fixed, "layers": self.layers}

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON, atomically (a reader never sees half a file)."""
        path = Path(path)
        self.check_structure()
        atomic_write_json(path, self.to_dict())
        self.path = path
        return path

    @classmethod
    def from_dict(cls, data: Any, path: str | Path | None = None) -> LatencyLookupTable:
        """A table from parsed JSON; every structural problem is a :class:`LUTError` naming it."""
        where = f"lookup table {path}" if path else "lookup table"
        if not isinstance(data, dict):
            raise LUTError(f"{where} must hold a JSON object, got {type(data).__name__}")
        for section, kind in (("meta", dict), ("layers", list), ("fixed", dict)):
            if section not in data:
                raise LUTError(f"{where} is missing its {section!r} section")
            if not isinstance(data[section], kind):
                raise LUTError(f"{where}: {section!r} must be a JSON {kind.__name__}")
        lut = cls(data["meta"], data["layers"], data["fixed"], path)
        lut.check_structure()
        return lut

    @classmethod
    def load(cls, path: str | Path) -> LatencyLookupTable:
        """Read and check a table; a missing, empty, truncated or corrupt file is a clear error."""
        path = Path(path)
        if not path.is_file():
            raise LUTError(
                f"lookup table {path} does not exist (build one with --train_or_sample build_lut)"
            )
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise LUTError(f"lookup table {path} is not a text file") from None
        if not text.strip():
            raise LUTError(f"lookup table {path} is empty")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            end = text.rstrip()
            if err.pos >= len(end) or (end.lstrip().startswith("{") and not end.endswith("}")):
                raise LUTError(
                    f"lookup table {path} is truncated: the JSON stops after {len(end)} characters "
                    "before the table is complete (interrupted write or copy?)"
                ) from None
            raise LUTError(
                f"lookup table {path} is corrupt: not valid JSON at line {err.lineno}, "
                f"column {err.colno}: {err.msg}"
            ) from None
        return cls.from_dict(data, path)

    def check_structure(self) -> None:
        """Check the header and every entry; raise :class:`LUTError` naming the first problem."""
        where = f"lookup table {self.path}" if self.path else "lookup table"
        meta = self.meta
        version = meta.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise LUTError(
                f"{where} has format_version {version!r}; this code reads version {FORMAT_VERSION}"
            )
        for key in ("search_space", "unit"):
            if key not in meta:
                raise LUTError(f"{where}: header is missing {key!r}")
        cost = meta.get("cost", "latency")
        if cost not in COSTS:
            raise LUTError(f"{where}: unknown cost {cost!r}; known: {', '.join(COSTS)}")
        expected = meta.get("num_layers")
        if expected is not None and expected != len(self.layers):
            raise LUTError(
                f"{where} has {len(self.layers)} layers but its header says {expected}: "
                "layers are missing (truncated or edited file?)"
            )
        if not self.layers:
            raise LUTError(f"{where} has no layers")
        allow_zero = cost != "latency"  # an identity skip has no FLOPs and no parameters
        for i, entries in enumerate(self.layers):
            if not isinstance(entries, dict) or not entries:
                raise LUTError(f"{where}: layer {i} must be a non-empty object of op -> entry")
            for op, entry in entries.items():
                if op not in OPS:
                    raise LUTError(
                        f"{where}: layer {i} has unknown op {op!r} (not in the op registry)"
                    )
                _check_entry(entry, f"{where}: layer {i}, op {op!r}", allow_zero)
        for part, entry in self.fixed.items():
            _check_entry(entry, f"{where}: fixed part {part!r}", allow_zero=True)
        if "probe_rounds" in meta:
            _check_probe_rounds(meta["probe_rounds"], where)

    def check_compatible(
        self,
        search_space_name: str | SearchSpace,
        input_size: int | None = None,
        candidate_ops: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Raise :class:`LUTError` naming every way this table does not fit the search to be run."""
        space = get_search_space(search_space_name)
        input_size = input_size or space.input_size
        candidate_ops = tuple(candidate_ops or space.candidate_ops)
        where = f"lookup table {self.path}" if self.path else "lookup table"
        problems = []
        if self.meta.get("search_space") != space.name:
            problems.append(
                f"it was built for search space {self.meta.get('search_space')!r}, "
                f"not {space.name!r}"
            )
        lut_size = self.meta.get("input_size")
        if lut_size is not None and lut_size != input_size:
            problems.append(f"it was measured at input size {lut_size}, not {input_size}")
        lut_batch = self.meta.get("batch_size")
        if batch_size is not None and lut_batch is not None and lut_batch != batch_size:
            problems.append(f"it was measured at batch size {lut_batch}, not {batch_size}")
        if self.num_layers != space.num_layers:
            problems.append(
                f"it has {self.num_layers} layers, search space {space.name!r} has {space.num_layers}"
            )
        else:
            shapes = self.meta.get("layer_shapes")
            want = [
                [s.in_channels, s.out_channels, s.stride, s.input_hw]
                for s in space.layer_shapes(input_size)
            ]
            if shapes is not None and [list(s) for s in shapes] != want:
                bad = next(i for i, (a, b) in enumerate(zip(shapes, want)) if list(a) != b)
                problems.append(
                    f"layer {bad} has shape {shapes[bad]} (in, out, stride, hw), the search space "
                    f"has {want[bad]}"
                )
            for i, entries in enumerate(self.layers):
                missing = [op for op in candidate_ops if op not in entries]
                if missing:
                    problems.append(f"layer {i} has no entry for ops {missing}")
                    break
        if problems:
            raise LUTError(f"{where} does not fit this search: " + "; ".join(problems))

    def describe(self) -> str:
        m = self.meta
        return (
            f"{m.get('cost', 'latency')} table, search space {m.get('search_space')}, input "
            f"{m.get('input_size')}, batch {m.get('batch_size')}, {m.get('device_name', m.get('device'))}, "
            f"threads {m.get('threads')}, unit {m.get('unit')}, fixed {self.fixed_cost:.3f}"
        )


def _check_entry(entry: Any, where: str, allow_zero: bool) -> None:
    if not isinstance(entry, dict) or "median" not in entry:
        raise LUTError(f"{where}: entry must be an object with a 'median' value, got {entry!r}")
    value = entry["median"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LUTError(f"{where}: 'median' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise LUTError(f"{where}: 'median' is not finite ({value!r})")
    if value < 0 or (value == 0 and not allow_zero):
        raise LUTError(f"{where}: 'median' must be positive, got {value!r}")


def _check_probe_rounds(rounds: Any, where: str) -> None:
    """``meta["probe_rounds"]``: equally long lists of positive probe times, one per build round."""
    if not isinstance(rounds, dict) or set(rounds) != set(PROBES):
        raise LUTError(f"{where}: 'probe_rounds' must be an object with exactly {list(PROBES)}")
    lengths = set()
    for name in PROBES:
        values = rounds[name]
        if not isinstance(values, list) or not values:
            raise LUTError(f"{where}: probe_rounds[{name!r}] must be a non-empty list")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise LUTError(f"{where}: probe_rounds[{name!r}] holds {v!r}, not a positive time")
        lengths.add(len(values))
    if len(lengths) > 1:
        raise LUTError(f"{where}: the lists of 'probe_rounds' differ in length {sorted(lengths)}")


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


ALLOCATORS = ("keep_heap", "default")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_allocator_in_effect = "default"


def use_allocator(name: str) -> str:
    """Set how this process's C allocator handles freed memory; returns the setting in effect.

    ``"keep_heap"``: glibc hands large freed blocks back to the OS (blocks above its mmap threshold
    are unmapped on ``free``, and a free top of the heap is trimmed), so an eager forward pass at
    224x224 maps, faults in and zeroes megabytes of activations again op after op: 1,300-3,700 page
    faults per FBNet pass on this project's 2-core VM, at a cost set by the host's memory management
    rather than by the op. A network's latency relative to another moved by up to 14-15% between
    fresh processes that way, 2-6% with ``keep_heap`` (``bench/bench_lut.py allocator``). Setting
    glibc's mmap and trim thresholds to 1 GiB (``mallopt``) keeps freed blocks in the heap for reuse,
    as a deployment runtime's memory arena does. It cannot be undone within a process. ``"default"``
    leaves the allocator alone (a warning says so if this process already keeps its heap). Without
    glibc, nothing changes and the result is ``"default"``.
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


def measure_op_latency(
    module: nn.Module,
    x: torch.Tensor,
    threads: int = 1,
    min_run_time: float = 0.2,
    number: int | None = None,
) -> dict[str, float]:
    """Time ``module(x)`` alone with ``torch.utils.benchmark`` (eval, inference mode); ms.

    ``number`` fixes the number of timed runs (one block each; e.g. 1 for a quick check); otherwise
    ``blocked_autorange`` runs for at least ``min_run_time`` seconds. The timer synchronises CUDA itself.
    """
    # imported here: torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME
    from torch.utils import benchmark

    module.eval()
    with torch.inference_mode():
        module(x)  # warm-up: first calls build kernels and allocate
        timer = benchmark.Timer(
            stmt="module(x)", globals={"module": module, "x": x}, num_threads=max(threads, 1)
        )
        if number is not None:
            times = [timer.timeit(1).median for _ in range(max(number, 1))]
        else:
            times = list(timer.blocked_autorange(min_run_time=min_run_time).times)
    ms = np.asarray(times) * 1e3
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {"median": float(q50), "iqr": float(q75 - q25), "n": len(ms)}


class _PoolFlatten(nn.Module):
    """FBNet's global pool and flatten, as one timed part."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


class _Classifier(nn.Module):
    """FBNet's dropout (a no-op in eval) and FC, as one timed part."""

    def __init__(self, dropout: nn.Module, fc: nn.Module) -> None:
        super().__init__()
        self.dropout = dropout
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


def network_parts(model: FBNet) -> tuple[dict[str, nn.Module], list[nn.Module]]:
    """The fixed parts and searched blocks of a built :class:`FBNet`, in forward order.

    Running ``stem, *blocks, head, pool, classifier`` in sequence computes exactly ``model(x)``.
    """
    fixed = {
        "stem": model.stem,
        "head": model.head,
        "pool": _PoolFlatten(model.pool),
        "classifier": _Classifier(model.dropout, model.classifier),
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


class SpeedProbes:
    """Two fixed CPU workloads timed once per round, to record the machine's state beside the timings.

    ``memory``: copying a 64 MiB float32 tensor (far larger than the caches: memory-bound).
    ``compute``: a 128x128 float32 matrix product, 8 times over (cache-resident: compute-bound).
    A table stores them for every round of its build and their medians; a validation measures them
    again, so it can compare the table with its rounds made in the build's conditions and its report can
    say whether memory or compute ran at another speed than during the build (this project's VM has
    phases of minutes in which some kinds of op run slower than others; README, "Latency lookup
    table"). On CUDA nothing is probed (``measure`` returns an empty dict).
    """

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cpu"
        if self.enabled:
            self.src = torch.ones(16 * 2**20)  # 64 MiB
            self.dst = torch.empty_like(self.src)
            self.a = torch.rand(128, 128)
        self.samples: dict[str, list[float]] = {name: [] for name in PROBES}

    def measure(self) -> dict[str, float]:
        """Time both workloads (the fastest of 3 each), remember and return them in ms."""
        if not self.enabled:
            return {}
        clock = time.perf_counter
        times = {}
        for name, work in (("memory_ms", self._copy), ("compute_ms", self._matmul)):
            runs = []
            for _ in range(3):
                t0 = clock()
                work()
                runs.append((clock() - t0) * 1e3)
            times[name] = min(runs)
            self.samples[name].append(times[name])
        return times

    def _copy(self) -> None:
        self.dst.copy_(self.src)

    def _matmul(self) -> None:
        b = self.a
        for _ in range(8):
            b = self.a @ b

    def per_round(self) -> dict[str, list[float]]:
        """Every sample, in the order measured (ms, 4 decimals): a table keeps them so that a
        validation can weigh its rounds to the same mix of conditions (``lut_validation.match_rounds``).
        """
        return {name: [round(v, 4) for v in values] for name, values in self.samples.items()}

    def summary(self) -> dict[str, float]:
        """Median, min and max of each probe over the rounds measured (empty when none)."""
        out = {}
        for name, values in self.samples.items():
            if values:
                out[name] = round(float(np.median(values)), 4)
                out[name + "_range"] = [round(min(values), 4), round(max(values), 4)]
        return out


def _common_meta(
    space: SearchSpace,
    input_size: int,
    batch_size: int,
    cnt_classes: int,
    head_channels: int,
    candidate_ops: Sequence[str],
    cost: str,
) -> dict[str, Any]:
    shapes = space.layer_shapes(input_size)
    return {
        "format_version": FORMAT_VERSION,
        "cost": cost,
        "unit": COSTS[cost],
        "statistic": "median",
        "search_space": space.name,
        "input_size": input_size,
        "batch_size": batch_size,
        "cnt_classes": cnt_classes,
        "head_channels": head_channels,
        "num_layers": space.num_layers,
        "candidate_ops": list(candidate_ops),
        "layer_shapes": [[s.in_channels, s.out_channels, s.stride, s.input_hw] for s in shapes],
        "layer_keys": [
            lut_key("*", s.in_channels, s.out_channels, s.stride, s.input_hw) for s in shapes
        ],
        "torch_version": torch.__version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _homogeneous_nets(
    space: SearchSpace,
    input_size: int,
    cnt_classes: int,
    head_channels: int,
    candidate_ops: Sequence[str],
    device: torch.device,
) -> dict[str, FBNet]:
    """One network per op using that op at every layer: the pool of blocks a build draws from."""
    nets = {}
    for op in candidate_ops:
        spec = ArchSpec(f"all_{op}", (op,) * space.num_layers, space.name, head_channels)
        nets[op] = (
            FBNet(spec, space, cnt_classes, input_size, head_channels=head_channels)
            .to(device)
            .eval()
        )
    return nets


def round_speed(times: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """How slow each round was, relative to the typical round: ``times[round, item]`` -> ``[round]``.

    Every round times the same items, so an item's time over its median across rounds shows the
    machine's speed in that round; the median over items ignores a burst that hit only a few of them.
    With ``weights`` (one per round) an item's median across rounds is the weighted one.
    """
    if weights is None:
        typical = np.median(times, axis=0)
    else:
        typical = weighted_percentiles(times, weights, [50])[0]
    return np.median(times / typical, axis=1)


def weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, percents: Sequence[float]
) -> list[np.ndarray]:
    """Percentiles along axis 0 of ``values[round, item]``, each round counted with its weight.

    For each percent ``q``: the smallest value whose rounds' cumulative weight reaches ``q``% of the
    total (the inverted distribution function; with equal weights and an even count, the median is
    the lower of the two middle values). Rounds of weight 0 do not count.
    """
    weights = np.asarray(weights, float)
    if weights.ndim != 1 or len(weights) != len(values) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError("need one non-negative weight per round, not all zero")
    order = np.argsort(values, axis=0, kind="stable")
    cumulative = np.cumsum(weights[order], axis=0) / weights.sum()  # [round, item]
    items = np.arange(values.shape[1])
    out = []
    for q in percents:
        first = np.argmax(cumulative >= q / 100.0 - 1e-12, axis=0)
        out.append(np.take_along_axis(values, order, axis=0)[first, items])
    return out


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
    head_channels: int | None = None,
    candidate_ops: Sequence[str] | None = None,
    seed: int = 0,
    method: str = "in_network",
    allocator: str = "keep_heap",
    progress: bool = True,
) -> LatencyLookupTable:
    """Measure the latency of every candidate op at every layer, and of the fixed parts (ms).

    ``method="in_network"`` (the default) times ops inside whole networks, a Latin-square round at a
    time (see the module docstring). ``rounds=0`` measures rounds until ``time_budget_s`` has passed
    since the start (at least ``min_rounds``, at most ``max_rounds``). ``method="isolated"`` times
    each op alone with ``torch.utils.benchmark`` (kept for comparison: it misses cache effects).
    ``allocator`` is set for the rest of the process (:func:`use_allocator`) and recorded in the meta.
    """
    space = get_search_space(search_space)
    input_size = input_size or space.input_size
    cnt_classes = cnt_classes or default_cnt_classes(input_size)
    head_channels = head_channels or space.head_channels
    candidate_ops = tuple(candidate_ops or space.candidate_ops)
    dev = resolve_device(str(device))
    if method not in ("in_network", "isolated"):
        raise ValueError(f"unknown method {method!r}: use in_network or isolated")
    allocator = use_allocator(allocator)
    with num_threads(threads if dev.type == "cpu" else None):
        return _build_lut(
            space, input_size, batch_size, dev, threads, rounds, time_budget_s, min_rounds,
            max_rounds, reps, warmup, normalize_rounds, cnt_classes, head_channels, candidate_ops,
            seed, method, allocator, progress,
        )  # fmt: skip


def _build_lut(
    space, input_size, batch_size, dev, threads, rounds, time_budget_s, min_rounds, max_rounds,
    reps, warmup, normalize_rounds, cnt_classes, head_channels, candidate_ops, seed, method,
    allocator, progress,
) -> LatencyLookupTable:  # fmt: skip
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    nets = _homogeneous_nets(space, input_size, cnt_classes, head_channels, candidate_ops, dev)
    fixed_parts, _ = network_parts(nets[candidate_ops[0]])
    blocks = {op: network_parts(net)[1] for op, net in nets.items()}
    x = torch.randn(batch_size, 3, input_size, input_size, device=dev)
    meta = _common_meta(
        space, input_size, batch_size, cnt_classes, head_channels, candidate_ops, "latency"
    )
    meta.update(
        device=dev.type,
        device_name=device_name(dev),
        threads=threads if dev.type == "cpu" else None,
        torch_num_threads=torch.get_num_threads(),
        method=method,
        allocator=allocator,
        seed=seed,
        host_cpus=os.cpu_count(),
        load_average_before=load_average(),
    )
    if dev.type == "cpu" and (meta["load_average_before"] or 0) > 0.5:
        logger.warning(
            "load average is %.2f before measuring: other work on this machine will skew the "
            "table (the in-network method's round scaling and medians absorb short bursts)",
            meta["load_average_before"],
        )
    if method == "isolated":
        layers, fixed = _build_isolated(
            space, input_size, fixed_parts, blocks, x, threads, progress
        )
        meta.update(min_run_time_s=0.2)
    else:
        layers, fixed, info = _build_in_network(
            space, candidate_ops, fixed_parts, blocks, x, dev, rng, rounds, time_budget_s,
            min_rounds, max_rounds, reps, warmup, normalize_rounds, progress, start,
        )  # fmt: skip
        meta.update(info)
    meta["build_time_s"] = round(time.perf_counter() - start, 1)
    meta["load_average_after"] = load_average()
    lut = LatencyLookupTable(meta, layers, fixed)
    lut.check_structure()
    logger.info("built %s in %.1f s", lut.describe(), meta["build_time_s"])
    return lut


def _build_in_network(
    space, candidate_ops, fixed_parts, blocks, x, dev, rng, rounds, time_budget_s, min_rounds,
    max_rounds, reps, warmup, normalize_rounds, progress, start,
):  # fmt: skip
    num_layers, k = space.num_layers, len(candidate_ops)
    clock = time.perf_counter
    fixed_names = list(fixed_parts)
    probes = SpeedProbes(dev)

    def run_round() -> tuple[np.ndarray, np.ndarray]:
        """One Latin square: per (layer, op) time and per fixed part (median over its k networks)."""
        perms = np.stack([rng.permutation(k) for _ in range(num_layers)])  # [layer, network]
        op_ms = np.zeros((num_layers, k))
        fixed_ms = np.zeros((len(fixed_names), k))
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
                time_parts(parts, x, dev, clock)
            passes = np.array([time_parts(parts, x, dev, clock) for _ in range(reps)]) * 1e3
            per_part = passes.min(axis=0)  # other load only ever adds time: the fastest rep
            op_ms[np.arange(num_layers), choice] = per_part[1 : 1 + num_layers]
            fixed_ms[:, j] = [per_part[0], *per_part[1 + num_layers :]]
        return op_ms, fixed_ms

    with torch.inference_mode():
        run_round()  # untimed warm-up round: every kernel gets built once
        t0 = clock()
        results = [run_round()]
        round_s = clock() - t0
        probes.measure()
        by_budget = rounds <= 0
        if by_budget:  # an estimate for the progress bar; the budget itself decides when to stop
            left = time_budget_s - (clock() - start)
            rounds = int(np.clip(left / max(round_s, 1e-6), min_rounds, max_rounds))
        bar = tqdm(desc="LUT rounds", disable=not progress, initial=1, total=rounds)
        while len(results) < (max_rounds if by_budget else rounds):
            if by_budget and len(results) >= min_rounds and clock() - start >= time_budget_s:
                break  # a busy machine slows rounds down: stop on time, not on the estimate
            results.append(run_round())
            probes.measure()
            bar.update()
        bar.close()
        rounds = len(results)
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
    fixed = {name: _stats(fixed_ms[:, i]) for i, name in enumerate(fixed_names)}
    info = {
        "rounds": int(rounds),
        "reps": reps,
        "warmup": warmup,
        "round_time_s": round(round_s, 3),
        "normalize_rounds": normalize_rounds,
        "round_speed": {  # round time / median round time: > 1 means a slow round
            "min": round(float(speed.min()), 3),
            "median": 1.0,
            "max": round(float(speed.max()), 3),
            "frac_slower_10pct": round(float(np.mean(speed > 1.1)), 3),
        },
    }
    if probes.enabled:
        info["probes"] = probes.summary()
        info["probe_rounds"] = probes.per_round()  # one sample per round
    return layers, fixed, info


def _build_isolated(space, input_size, fixed_parts, blocks, x, threads, progress):
    """Each part alone on an input of its own shape, with ``torch.utils.benchmark``."""
    shapes = space.layer_shapes(input_size)
    with torch.inference_mode():
        stem_out = fixed_parts["stem"](x)
        fixed = {"stem": measure_op_latency(fixed_parts["stem"], x, threads)}
        layers = []
        for li, s in enumerate(tqdm(shapes, desc="LUT layers", disable=not progress)):
            xin = torch.randn(x.shape[0], s.in_channels, s.input_hw, s.input_hw, device=x.device)
            if li == 0:
                xin = stem_out
            layers.append({op: measure_op_latency(b[li], xin, threads) for op, b in blocks.items()})
            last = next(iter(blocks.values()))[li](xin)
        head_out = fixed_parts["head"](last)
        pooled = fixed_parts["pool"](head_out)
        fixed["head"] = measure_op_latency(fixed_parts["head"], last, threads)
        fixed["pool"] = measure_op_latency(fixed_parts["pool"], head_out, threads)
        fixed["classifier"] = measure_op_latency(fixed_parts["classifier"], pooled, threads)
    return layers, fixed


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
    head_channels: int | None = None,
    candidate_ops: Sequence[str] | None = None,
) -> LatencyLookupTable:
    """A FLOPs (multiply-adds) or parameter table in the latency table's format; no timing."""
    if cost not in ("flops", "params"):
        raise ValueError(f"build_cost_table makes 'flops' or 'params' tables, not {cost!r}")
    space = get_search_space(search_space)
    input_size = input_size or space.input_size
    cnt_classes = cnt_classes or default_cnt_classes(input_size)
    head_channels = head_channels or space.head_channels
    candidate_ops = tuple(candidate_ops or space.candidate_ops)
    meta_device = torch.device("meta")  # shapes only: counting needs no memory and no compute
    with meta_device:
        nets = _homogeneous_nets(
            space, input_size, cnt_classes, head_channels, candidate_ops, meta_device
        )
    fixed_parts, _ = network_parts(nets[candidate_ops[0]])
    x = torch.zeros(batch_size, 3, input_size, input_size, device=meta_device)
    layers: list[dict[str, dict[str, float]]] = [{} for _ in range(space.num_layers)]
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
                h = nets[candidate_ops[0]].blocks(h)
            fixed[name] = {"median": _module_cost(fixed_parts[name], h, cost), "iqr": 0.0, "n": 1}
            h = fixed_parts[name](h)
    meta = _common_meta(
        space, input_size, batch_size, cnt_classes, head_channels, candidate_ops, cost
    )
    meta.update(device="none", device_name="counted, not timed", method="flop_counter")
    lut = LatencyLookupTable(meta, layers, fixed)
    lut.check_structure()
    return lut
