"""FBNet's latency-aware loss (Wu et al., CVPR 2019, Eq. 2).

    L(a, w_a) = CE(a, w_a) * alpha * log(LAT(a)) ** beta                                (paper Eq. 2)

``LAT(a)`` is the expected cost of the sampled architecture from the lookup table (summed over the
searched layers), multiplied by ``cost_scale`` before the log. The table is in milliseconds; the default
scale 1000 turns it into microseconds, the unit the original CIFAR-10 reproduction measured in. The log
must be positive for every architecture (a fractional power of a negative log is not a real number, and
a log near 0 would flip the term's meaning), so :func:`check_cost_table` refuses a table whose cheapest
architecture costs 1 unit or less after scaling. Any per-op cost works the same way: a FLOPs or
parameter table passes through unchanged, as long as its cheapest architecture passes that check.

Variants (``variant``):

- ``"paper"`` (default): Eq. 2 as written.
- ``"original"``: ``alpha * CE * beta * log(LAT)``, what the original reproduction computed
  (``alpha * ce * log(LAT ** beta)``); kept for comparison.
- ``"ce"``: the cross-entropy alone (a latency term of 1, with zero gradient): the DARTS-vs-FBNet
  experiment, which searches without a cost (``supernet_functions.experiments.darts_vs_fbnet``).

**Latency target** (``--target_latency_ms T``, 0 = off). With the table's fixed parts ``F`` (stem, head;
in LAT only with ``--loss_include_fixed``), ``LAT + F`` is the expected whole-network latency, and the
target is a hinge on it:

    L(a, w_a) = CE(a, w_a) * alpha * log(scale * max(LAT(a), T - F)) ** beta       (T in ms, F in ms)

(``T`` instead of ``T - F`` when ``LAT`` already holds ``F``). Above the target this is exactly Eq. 2;
below it the latency term is the constant ``alpha * log(scale * (T - F)) ** beta``, so the thetas'
gradient carries the cross-entropy only and nothing pushes the network faster than the budget. The
loss is continuous at the target, and ``T = 0`` gives Eq. 2 everywhere. This is MnasNet's *hard*
constraint (Tan et al., CVPR 2019, Eq. 2: reward exponent 0 when ``LAT <= T``) applied to FBNet's
latency term. MnasNet's *soft* form, a factor ``(LAT / T) ** w`` with one exponent on both sides,
would not work here: ``T`` would only rescale the loss by ``T ** -w``, which Adam's theta steps ignore,
so the target would not change the search. The target is compared with the table's prediction in ms,
before ``cost_scale``; it needs a latency table (not FLOPs or parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSS_VARIANTS",
    "SupernetLoss",
    "check_cost_table",
    "latency_share",
    "loss_target",
    "max_architecture_cost",
    "min_architecture_cost",
]

LOSS_VARIANTS = ("paper", "original", "ce")


class SupernetLoss(nn.Module):
    """``CE * alpha * log(scale * LAT) ** beta`` (paper Eq. 2) or the original's product variant.

    ``fixed_cost`` (table unit) is added to ``LAT`` first: the stem and head, when the search counts
    them (the paper's Eq. 4 sums the searched layers only, so the default is 0). ``target`` (table
    unit, 0 = off) is the hinge of the module docstring on ``LAT + fixed_cost``: below it the latency
    term is constant (see :func:`loss_target` for turning a whole-network target in ms into it).

    ``forward(logits, targets, latency)`` returns ``(loss, ce, latency_term)``. ``latency`` is a scalar,
    or one value per example (per-sample Gumbel draws); then the loss is the batch mean of the
    per-example products.
    """

    def __init__(
        self,
        alpha: float = 0.2,
        beta: float = 0.6,
        variant: str = "paper",
        cost_scale: float = 1000.0,
        fixed_cost: float = 0.0,
        target: float = 0.0,
    ) -> None:
        super().__init__()
        if variant not in LOSS_VARIANTS:
            raise ValueError(f"unknown loss variant {variant!r}; use one of {LOSS_VARIANTS}")
        if cost_scale <= 0:
            raise ValueError(f"cost_scale must be positive, got {cost_scale}")
        self.alpha, self.beta, self.variant, self.cost_scale = alpha, beta, variant, cost_scale
        if target < 0:
            raise ValueError(f"the latency target must be 0 (off) or positive, got {target}")
        self.fixed_cost, self.target = fixed_cost, target

    def above_target(self, latency: torch.Tensor) -> torch.Tensor:
        """Where the hinge binds: ``LAT + fixed_cost > target`` (all False without a target)."""
        return (latency + self.fixed_cost > self.target) & (self.target > 0)

    def latency_term(self, latency: torch.Tensor) -> torch.Tensor:
        """``alpha * log(scale * LAT) ** beta`` (paper), ``alpha * beta * log(scale * LAT)``
        (original) or 1 (ce; still a function of ``LAT``, so the thetas' latency pull is a zero
        gradient, not a missing one).

        With a target, ``LAT`` is ``max(LAT, target)`` (the hinge): no gradient below the target.
        """
        if self.variant == "ce":
            return latency * 0.0 + 1.0
        latency = latency + self.fixed_cost
        if self.target > 0:
            latency = latency.clamp_min(self.target)
        log_lat = torch.log(latency * self.cost_scale)
        if self.variant == "paper":
            return self.alpha * log_lat.pow(self.beta)
        return self.alpha * self.beta * log_lat

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, latency: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        term = self.latency_term(latency)
        if term.dim() == 0:
            ce = F.cross_entropy(logits, targets)
            return ce * term, ce, term
        ce_each = F.cross_entropy(logits, targets, reduction="none")
        return (ce_each * term).mean(), ce_each.mean(), term.mean()


def latency_share(
    criterion: SupernetLoss, logits: torch.Tensor, targets: torch.Tensor, latency: torch.Tensor
) -> torch.Tensor:
    """The loss with the cross-entropy held constant (its value, no gradient).

    The thetas' gradient of ``CE * term(LAT)`` is ``term * dCE`` plus ``CE * dterm``: this returns
    a loss whose gradient is the second part alone (the latency term's pull), so the first (the
    cross-entropy's) is the loss's gradient minus it. Per-example latencies keep their per-example
    pairing, as in the loss. Only the latency graph is differentiated: it costs no conv backward.
    """
    term = criterion.latency_term(latency)
    ce = F.cross_entropy(logits.detach(), targets, reduction="none" if term.dim() else "mean")
    return (ce * term).mean()


def _extreme_cost(lut, candidate_ops, include_fixed: bool, pick) -> float:
    """Sum over layers of ``pick`` (min or max) of the layer's op costs, plus the fixed parts."""
    total = 0.0
    for i in range(lut.num_layers):
        ops = candidate_ops or list(lut.layers[i])
        total += pick(lut.query(i, op) for op in ops)
    return total + (lut.fixed_cost if include_fixed else 0.0)


def min_architecture_cost(lut, candidate_ops=None, include_fixed: bool = False) -> float:
    """The cost of the cheapest architecture in the table: the sum of every layer's cheapest op."""
    return _extreme_cost(lut, candidate_ops, include_fixed, min)


def max_architecture_cost(lut, candidate_ops=None, include_fixed: bool = False) -> float:
    """The cost of the most expensive architecture in the table: every layer's dearest op."""
    return _extreme_cost(lut, candidate_ops, include_fixed, max)


def loss_target(
    target_latency_ms: float, lut, include_fixed: bool = False, candidate_ops=None, log=None
) -> float:
    """The ``target`` of :class:`SupernetLoss` for a whole-network latency target in ms (0: off).

    The loss's ``LAT`` sums the searched layers (plus the fixed parts with ``include_fixed``), so the
    whole-network target ``T`` becomes ``T - F`` for the layers alone. A target that no architecture
    can meet (at or below the fixed parts) or a table that is not in ms is refused; a target below
    the cheapest or above the dearest architecture is allowed with a warning on ``log``.
    """
    if target_latency_ms == 0:
        return 0.0
    if target_latency_ms < 0 or not math.isfinite(target_latency_ms):
        raise ValueError(
            f"--target_latency_ms must be 0 (off) or positive, got {target_latency_ms}"
        )
    unit = lut.meta.get("unit")
    where = f" {lut.path}" if getattr(lut, "path", None) else ""
    if lut.cost != "latency" or unit != "ms":
        raise ValueError(
            f"--target_latency_ms needs a latency table in ms; the table{where} holds {lut.cost} "
            f"in {unit!r}"
        )
    fixed = lut.fixed_cost
    if target_latency_ms <= fixed:
        raise ValueError(
            f"--target_latency_ms {target_latency_ms:g} is at or below the fixed parts of every "
            f"network (stem, head: {fixed:.4g} ms in the table{where}): no architecture can meet it"
        )
    cheapest = min_architecture_cost(lut, candidate_ops) + fixed
    dearest = max_architecture_cost(lut, candidate_ops) + fixed
    if log is not None:
        if target_latency_ms < cheapest:
            log.warning(
                "latency target %.4g ms is below the cheapest architecture (%.4g ms): the hinge "
                "never binds and the loss is the paper's throughout",
                target_latency_ms,
                cheapest,
            )
        elif target_latency_ms >= dearest:
            log.warning(
                "latency target %.4g ms is at or above the dearest architecture (%.4g ms): the "
                "search has no latency pressure at all",
                target_latency_ms,
                dearest,
            )
    return target_latency_ms - (0.0 if include_fixed else fixed)


def check_cost_table(
    lut, cost_scale: float = 1000.0, candidate_ops=None, include_fixed: bool = False
) -> float:
    """Refuse a table for which ``log(scale * LAT) <= 0`` for some architecture; return the minimum.

    The expected latency of any mixture is at least that of the cheapest architecture, so checking the
    cheapest one covers every architecture and every point of the search.
    """
    cheapest = min_architecture_cost(lut, candidate_ops, include_fixed)
    unit = lut.meta.get("unit", "?")
    where = f" ({lut.path})" if getattr(lut, "path", None) else ""
    if not math.isfinite(cheapest) or cheapest * cost_scale <= 1.0:
        raise ValueError(
            f"cost table{where}: the cheapest architecture costs {cheapest:.6g} {unit}, so "
            f"log({cost_scale:g} * LAT) = log({cheapest * cost_scale:.6g}) is not positive and the "
            "loss CE * alpha * log(LAT)^beta is undefined or inverted. Use a larger --cost_scale "
            "(e.g. 1000 turns ms into microseconds) or a table in a finer unit."
        )
    return cheapest
