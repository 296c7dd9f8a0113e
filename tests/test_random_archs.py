"""Random architectures within a latency window: the window, distinctness, and uniformity over it."""

import itertools

import numpy as np
import pytest

from supernet_functions.latency.random_archs import (
    _tilted,
    cost_matrix,
    sample_within_latency,
    tilt_for_mean,
    window_draws,
)
from supernet_functions.latency.table import LatencyLookupTable

OPS = ["a", "b", "c"]
# 4 layers x 3 ops: 81 architectures; costs differ per layer so most sums are distinct
ROWS = [{"a": 1.0 + 0.1 * i, "b": 2.0 + 0.3 * i, "c": 4.0 + 0.7 * i} for i in range(4)]
FIXED = {"stem": 0.5, "head": 0.5}


def _lut() -> LatencyLookupTable:
    return LatencyLookupTable.from_latencies("tiny", ROWS, fixed_ms=FIXED)


def _all_archs() -> dict[tuple[str, ...], float]:
    """Every architecture and its whole-network latency, by enumeration."""
    return {
        ops: sum(ROWS[i][op] for i, op in enumerate(ops)) + sum(FIXED.values())
        for ops in itertools.product(OPS, repeat=len(ROWS))
    }


def test_drawn_architectures_are_distinct_inside_the_window_and_seeded():
    lut, center = _lut(), 12.0
    inside = sorted(ops for ops, c in _all_archs().items() if 10.8 <= c <= 13.2)
    assert len(inside) >= 12
    excluded = inside[0]  # the searched architecture is never drawn again
    found, used = sample_within_latency(lut, OPS, center, 0.1, count=6, seed=1, exclude=[excluded])
    assert len(found) == 6 and used >= 6
    drawn = {tuple(ops) for ops, _ in found}
    assert len(drawn) == 6 and excluded not in drawn
    for ops, cost in found:
        assert cost == pytest.approx(lut.predict(ops))
        assert tuple(ops) in inside
    again, _ = sample_within_latency(lut, OPS, center, 0.1, count=6, seed=1, exclude=[excluded])
    assert again == found


def test_accepted_architectures_are_uniform_over_the_window_enumerated_another_way():
    # a window far below the uniform mean (13.4 ms): the proposal is tilted
    lut, low, high = _lut(), 8.0, 10.0
    costs = cost_matrix(lut, OPS)
    inside = {ops for ops, c in _all_archs().items() if low <= c <= high}
    assert 6 <= len(inside) <= 30
    lam = tilt_for_mean(costs, (low + high) / 2 - 1.0)
    assert lam > 0.1  # tilted towards cheap ops
    every, counts = _all_archs(), dict.fromkeys(inside, 0)
    rng = np.random.default_rng(0)
    for index, total, _ in window_draws(costs, 1.0, low, high, rng, max_draws=200_000):
        ops = tuple(OPS[k] for k in index)
        assert ops in inside and total == pytest.approx(every[ops])
        counts[ops] += 1
    n, m = sum(counts.values()), len(inside)
    chi2 = sum((c - n / m) ** 2 / (n / m) for c in counts.values())
    assert n > 50 * m and chi2 < (m - 1) + 5 * (2 * (m - 1)) ** 0.5  # uniform: chi2 ~ m - 1
    # the proposal alone is far from uniform over the window: the acceptance step is what levels it
    p = _tilted(costs, lam)
    q = [np.prod([p[i, OPS.index(op)] for i, op in enumerate(ops)]) for ops in inside]
    assert max(q) / min(q) > 2 and max(counts.values()) / min(counts.values()) < 1.5


def test_an_unreachable_window_or_too_few_architectures_is_one_clear_error():
    lut = _lut()
    with pytest.raises(ValueError, match="no architecture lies within 10% of 50"):
        sample_within_latency(lut, OPS, 50.0)
    with pytest.raises(ValueError, match=r"found \d+ of 500 distinct architectures"):
        sample_within_latency(lut, OPS, 12.0, count=500, max_draws=20_000)
    with pytest.raises(ValueError, match="0 < window < 1"):
        sample_within_latency(lut, OPS, 12.0, window=1.5)
