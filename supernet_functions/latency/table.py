"""The cost lookup table (LUT) as data: its JSON file, its checks, and the queries a search makes.

FBNet predicts a network's latency as the sum of its ops' latencies (paper Eq. 4):
``LAT(a) = sum_l LAT(op chosen at layer l)``. A table holds that cost of every candidate op at every
searched layer, plus the fixed parts (stem, head, pool, classifier), so a sum predicts a whole network.
:mod:`supernet_functions.latency.measure` measures (or counts) one; this module reads, checks,
queries and writes it.

JSON layout (``format_version`` 1)::

    {"meta": {"format_version", "cost": "latency"|"flops"|"params", "unit", "statistic": "median",
              "search_space", "input_size", "batch_size", "cnt_classes", "head_channels",
              "structure": {"dw_bn_relu", "head", "head_channels"}, "num_layers",
              "candidate_ops", "layer_shapes": [[in_ch, out_ch, stride, input_hw], ...],
              "device", "device_name", "torch_version", "threads", "date", "method", "allocator", ...},
     "fixed": {"stem": {"median": ms, "iqr": ms, "n": k}, "head": {...}, "pool": {...},
               "classifier": {...}},
     "layers": [{"ir_k3_e1": {"median": ms, "iqr": ms, "n": k}, ...}, ...]}   # one per searched layer

Loading checks the structure and every value (finite, positive, below one hour per op for latency), so
a corrupt or hand-edited file fails with one line naming the file, the entry and the value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fbnet_building_blocks.registry import OPS
from fbnet_building_blocks.search_space import SearchSpace, get_search_space
from fbnet_building_blocks.structure import DEFAULT_STRUCTURE, Structure, structure_of_table
from general_functions.io_utils import MAX_JSON_BYTES, atomic_write_json

__all__ = [
    "COSTS",
    "FIXED_PARTS",
    "FORMAT_VERSION",
    "LUT_DIR",
    "MAX_VALUE",
    "LUTError",
    "LatencyLookupTable",
    "default_cnt_classes",
    "default_lut_path",
    "lut_key",
]

FORMAT_VERSION = 1
FIXED_PARTS: tuple[str, ...] = ("stem", "head", "pool", "classifier")
# cost -> unit. FLOPs are counted as multiply-adds, as the paper does.
COSTS: dict[str, str] = {"latency": "ms", "flops": "M multiply-adds", "params": "M parameters"}
# The largest value an entry may hold, in the cost's unit: one hour per op, or 10^15 multiply-adds or
# parameters. Anything above is a corrupt or hand-edited file (1e308 overflows the loss to inf).
MAX_VALUE: dict[str, float] = {"latency": 3.6e6, "flops": 1e9, "params": 1e9}
LUT_DIR = Path(__file__).resolve().parents[2] / "luts"


class LUTError(ValueError):
    """A lookup table that is corrupt, truncated or does not fit the search being run."""


def lut_key(op: str, in_channels: int, out_channels: int, stride: int, input_hw: int) -> str:
    """A readable, stable name for one entry: ``ir_k3_e6|16->24|s2|112``."""
    return f"{op}|{in_channels}->{out_channels}|s{stride}|{input_hw}"


def default_lut_path(search_space: str, input_size: int, cost: str = "latency") -> Path | None:
    """The committed table for a search space and input size (``luts/<space>_<size>_cpu.json`` for
    latency, ``luts/<space>_<size>_<cost>.json`` otherwise), or ``None`` when there is none.

    The committed latency tables were measured on this project's 2-core CPU VM; on other hardware,
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
        """A table from plain numbers (tests, hand-made tables): ``latencies[layer][op] = ms``.

        It prices the default structure unless ``meta`` names one (``structure={...}``)."""
        layers = [{op: {"median": float(v), "iqr": 0.0} for op, v in d.items()} for d in latencies]
        fixed = {k: {"median": float(v), "iqr": 0.0} for k, v in (fixed_ms or {}).items()}
        unit = COSTS.get(meta.get("cost", "latency"), "ms")
        meta = {
            "search_space": search_space,
            "statistic": "median",
            "unit": unit,
            "structure": DEFAULT_STRUCTURE.to_dict(),
            **meta,
        }
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
    def structure(self) -> Structure:
        """The block and head variant the table priced (:mod:`fbnet_building_blocks.structure`)."""
        return structure_of_table(self.meta)

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

    def describe(self) -> str:
        m = self.meta
        return (
            f"{self.cost} table, search space {m.get('search_space')}, input {m.get('input_size')}, "
            f"batch {m.get('batch_size')}, {m.get('device_name', m.get('device'))}, threads "
            f"{m.get('threads')}, allocator {self.allocator}, unit {m.get('unit')}, "
            f"fixed {self.fixed_cost:.3f}"
        )

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
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:  # refused unread
            raise LUTError(
                f"lookup table {path} is {size} bytes; at most {MAX_JSON_BYTES} are read"
            )
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise LUTError(f"lookup table {path} is not a text file") from None
        if not text.strip():
            raise LUTError(f"lookup table {path} is empty")
        try:
            data = json.loads(text)
        except RecursionError:
            raise LUTError(f"lookup table {path} is nested too deeply to be a table") from None
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
        cost = self.cost
        if cost not in COSTS:
            raise LUTError(f"{where}: unknown cost {cost!r}; known: {', '.join(COSTS)}")
        if meta["unit"] != COSTS[cost]:
            raise LUTError(f"{where}: a {cost} table is in {COSTS[cost]!r}, not {meta['unit']!r}")
        expected = meta.get("num_layers")
        if expected is not None and expected != len(self.layers):
            raise LUTError(
                f"{where} has {len(self.layers)} layers but its header says {expected}: "
                "layers are missing (truncated or edited file?)"
            )
        if not self.layers:
            raise LUTError(f"{where} has no layers")
        try:
            structure_of_table(meta)
        except (ValueError, TypeError) as err:
            raise LUTError(f"{where}: {err}") from None
        shapes = meta.get("layer_shapes")
        for i, entries in enumerate(self.layers):
            if not isinstance(entries, dict) or not entries:
                raise LUTError(f"{where}: layer {i} must be a non-empty object of op -> entry")
            for op, entry in entries.items():
                if op not in OPS:
                    raise LUTError(
                        f"{where}: layer {i} has unknown op {op!r} (not in the op registry)"
                    )
                key = f"layer {i}, op {op!r}"
                if isinstance(shapes, list) and i < len(shapes) and len(shapes[i]) == 4:
                    key += f" ({lut_key(op, *shapes[i])})"
                self._check_entry(entry, f"{where}: {key}", allow_zero=cost != "latency")
        for part, entry in self.fixed.items():
            self._check_entry(entry, f"{where}: fixed part {part!r}", allow_zero=True)

    def _check_entry(self, entry: Any, where: str, allow_zero: bool) -> None:
        """An entry is ``{"median": value, ...}`` with a finite value in the cost's sane range (0 is
        allowed where ``allow_zero``: an identity skip has no FLOPs and no parameters)."""
        if not isinstance(entry, dict) or "median" not in entry:
            raise LUTError(f"{where}: entry must be an object with a 'median' value, got {entry!r}")
        value = entry["median"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LUTError(f"{where}: 'median' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise LUTError(f"{where}: 'median' is not finite ({value!r})")
        cost, unit = self.cost, self.meta["unit"]
        if value < 0 or (value == 0 and not allow_zero):
            raise LUTError(f"{where}: 'median' must be positive, got {value!r} {unit}")
        if value > MAX_VALUE[cost]:
            limit = "one hour per op" if cost == "latency" else "10^15 per op"
            raise LUTError(
                f"{where}: 'median' {value!r} {unit} is out of range (above {MAX_VALUE[cost]:g}, "
                f"{limit}): a corrupt or edited table?"
            )

    def check_compatible(
        self,
        search_space_name: str | SearchSpace,
        input_size: int | None = None,
        candidate_ops: Sequence[str] | None = None,
        batch_size: int | None = None,
        structure: Structure | None = None,
    ) -> None:
        """Raise :class:`LUTError` naming every way this table does not fit the search to be run.

        With ``structure``, a table that priced another block or head variant is refused: its sums
        would price networks other than the ones the search builds and the trainer trains.
        """
        where = f"lookup table {self.path}" if self.path else "lookup table"
        space = get_search_space(search_space_name)
        input_size = input_size or space.input_size
        candidate_ops = list(candidate_ops or space.candidate_ops)
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
        if structure is not None and self.structure != structure:
            problems.append(
                f"it priced networks with {self.structure.describe()} ({self.structure.flags()}), "
                f"this search builds {structure.describe()} ({structure.flags()})"
            )
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
