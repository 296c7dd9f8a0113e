"""The latency lookup table (LUT): the latency of every candidate op at every searched layer.

FBNet predicts a network's latency as the sum of its ops' latencies (paper Eq. 4):
``LAT(a) = sum_l LAT(op chosen at layer l)``. This table also holds the fixed parts (stem, head, pool,
classifier), so the sum predicts a whole network.

JSON layout::

    {"meta": {"search_space", "input_size", "batch_size", "device", "device_name", "torch_version",
              "threads", "statistic": "median", "unit": "ms", "date", ...},
     "fixed": {"stem": {"median": ms, "iqr": ms}, "head": {...}},
     "layers": [{"ir_k3_e1": {"median": ms, "iqr": ms}, ...}, ...]}     # one dict per searched layer
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["LatencyLookupTable", "LUTError"]

logger = logging.getLogger(__name__)


class LUTError(ValueError):
    """A lookup table that is corrupt, truncated or does not fit the search being run."""


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

    @property
    def num_layers(self) -> int:
        return len(self.layers)

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

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "fixed": self.fixed, "layers": self.layers}
