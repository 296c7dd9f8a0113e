"""Random architectures of a given predicted latency: the control a searched network is compared with.

:func:`sample_within_latency` draws architectures uniformly from the set of architectures of a search
space whose predicted latency (the table's whole-network sum, paper Eq. 4 plus the fixed parts) lies in
a window ``[c * (1 - w), c * (1 + w)]``, by rejection sampling with a seed:

1. Proposal: every layer's op drawn independently with probability ``p_l(k) ~ exp(-lambda * c_lk)``
   (``c_lk``: the table's cost of op ``k`` at layer ``l``). Because the latency is a sum over layers,
   a whole architecture ``a`` is proposed with probability ``~ exp(-lambda * LAT(a))`` (exponential
   tilting). ``lambda`` is chosen so that the proposal's mean latency is the window's centre, so a
   window far from the uniform mean (12.4 ms for the 32x32 CPU table, while a searched network may be
   at 8 ms) is still hit often; ``lambda = 0`` is plain uniform sampling.
2. Accept a proposal inside the window with probability ``exp(lambda * (LAT(a) - b))``, ``b`` the window
   edge that makes it at most 1. Proposal times acceptance is then the same for every architecture in
   the window, so the accepted architectures are uniform over the window, exactly as plain rejection
   sampling from the uniform distribution would give, only with far fewer draws.

Duplicates and the architectures in ``exclude`` (the searched one) are skipped. After ``max_draws``
proposals without enough accepted architectures the sampler stops with an error that names the window
and the range of latencies the table allows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["cost_matrix", "sample_within_latency", "tilt_for_mean", "window_draws"]

_CHUNK = 4096  # proposals drawn per numpy call


def cost_matrix(lut, candidate_ops: Sequence[str]) -> np.ndarray:
    """``[layers, ops]`` costs of the table (table unit), in the order of ``candidate_ops``."""
    return np.array([[lut.query(i, op) for op in candidate_ops] for i in range(lut.num_layers)])


def _tilted(costs: np.ndarray, lam: float) -> np.ndarray:
    """Every layer's proposal probabilities ``~ exp(-lam * cost)``."""
    logits = -lam * costs
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def tilt_for_mean(costs: np.ndarray, target: float, iters: int = 100) -> float:
    """``lambda`` whose tilted proposal has mean layer cost ``target`` (clipped to what is reachable).

    The mean falls monotonically as ``lambda`` grows (its derivative is minus the variance), so a
    bisection finds it.
    """
    lo, hi = -1.0, 1.0
    scale = 1.0 / max(float(np.ptp(costs, axis=1).max()), 1e-12)  # lambda in units of 1/cost

    def mean(lam: float) -> float:
        return float((_tilted(costs, lam * scale) * costs).sum())

    while mean(lo) < target and lo > -1e3:
        lo *= 2
    while mean(hi) > target and hi < 1e3:
        hi *= 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        if mean(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2 * scale


def window_draws(
    costs: np.ndarray,
    fixed: float,
    low: float,
    high: float,
    rng: np.random.Generator,
    max_draws: int,
) -> Iterator[tuple[np.ndarray, float, int]]:
    """Accepted architectures (op indices, whole-network cost, proposals used so far), uniform over
    the window ``[low, high]``; duplicates included. Stops after ``max_draws`` proposals."""
    lam = tilt_for_mean(costs, (low + high) / 2 - fixed)
    cdf = np.cumsum(_tilted(costs, lam), axis=1)
    cdf[:, -1] = 1.0
    edge = high if lam > 0 else low  # exp(lam * (cost - edge)) <= 1 inside the window
    layers = np.arange(costs.shape[0])
    drawn = 0
    while drawn < max_draws:
        n = min(_CHUNK, max_draws - drawn)
        u = rng.random((n, costs.shape[0]))
        index = (u[:, :, None] > cdf[None, :, :]).sum(axis=2)
        total = costs[layers, index].sum(axis=1) + fixed
        keep_p = np.exp(np.minimum(lam * (total - edge), 0.0))
        accept = (total >= low) & (total <= high) & (rng.random(n) < keep_p)
        for row in np.flatnonzero(accept):
            yield index[row], float(total[row]), int(drawn + row + 1)
        drawn += n


def sample_within_latency(
    lut,
    candidate_ops: Sequence[str],
    center: float,
    window: float = 0.1,
    count: int = 6,
    seed: int = 0,
    max_draws: int = 1_000_000,
    exclude: Sequence[Sequence[str]] = (),
) -> tuple[list[tuple[list[str], float]], int]:
    """``count`` distinct architectures, uniform over those whose predicted whole-network cost lies
    within ``center * (1 +- window)``, none in ``exclude``.

    Returns ``([(ops, predicted cost), ...], proposals drawn)``. Raises ``ValueError`` when no
    architecture of the table can lie in the window, or when ``max_draws`` proposals gave fewer than
    ``count`` distinct ones.
    """
    if count < 1 or max_draws < 1 or not 0 < window < 1 or not center > 0:
        raise ValueError(
            f"need count >= 1, max_draws >= 1, 0 < window < 1 and a positive centre; got count "
            f"{count}, max_draws {max_draws}, window {window}, centre {center}"
        )
    costs = cost_matrix(lut, candidate_ops)
    fixed = lut.fixed_cost
    low, high = center * (1 - window), center * (1 + window)
    cheapest, dearest = costs.min(axis=1).sum() + fixed, costs.max(axis=1).sum() + fixed
    unit = lut.meta.get("unit", "ms")
    where = (
        f"within {window:.0%} of {center:.4g} {unit} ({low:.4g}-{high:.4g} {unit}); the table's "
        f"architectures span {cheapest:.4g}-{dearest:.4g} {unit}"
    )
    if high < cheapest or low > dearest:
        raise ValueError(f"no architecture lies {where}")
    seen = {tuple(ops) for ops in exclude}
    found: list[tuple[list[str], float]] = []
    used = 0
    rng = np.random.default_rng(seed)
    for index, total, used in window_draws(costs, fixed, low, high, rng, max_draws):
        ops = [candidate_ops[k] for k in index]
        if tuple(ops) in seen:
            continue
        seen.add(tuple(ops))
        found.append((ops, total))
        if len(found) == count:
            return found, used
    raise ValueError(
        f"found {len(found)} of {count} distinct architectures {where}, in {max_draws} draws: "
        "widen the window or allow more draws"
    )
