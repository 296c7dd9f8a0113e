"""The statistics of a search-vs-random evaluation: per-network means, the proxy's ranking check, the verdict.

Every function works on the evaluation's records, one per trained network and seed: ``{"name", "kind"
("searched" | "random" | "heuristic" | "named"), "ops", "predicted_latency_ms", "measured_latency_ms",
"seed", "top1"}``.

- :func:`anova` asks whether the proxy recipe can tell the random networks apart at all: the one-way
  ANOVA F statistic, between-network mean square over within-network (seed) mean square, against the
  95% quantile of the F distribution with ``(k - 1, N - k)`` degrees of freedom (``scipy.stats.f``).
  When it cannot, no comparison of networks by that proxy means anything.
- :func:`verdict` applies the rule fixed before the runs (docs/experiments.md, "Search against chance"):
  the searched networks beat the random ones by more than two standard errors of the difference, are
  not worse than the heuristic baseline by more than ``HEURISTIC_SLACK_POINTS``, are dominated by no
  evaluated network, meet the latency target within ``LATENCY_TOLERANCE``, and the table that guided
  the search predicts the evaluated networks within ``MAX_TABLE_MAPE_PERCENT``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ALPHA",
    "HEURISTIC_SLACK_POINTS",
    "LATENCY_TOLERANCE",
    "MAX_TABLE_MAPE_PERCENT",
    "STANDARD_ERRORS",
    "anova",
    "network_stats",
    "pareto_front",
    "verdict",
]

ALPHA = 0.05  # the F test's level: F must exceed the 95% quantile
STANDARD_ERRORS = (
    2.0  # the searched-random gap must exceed this many standard errors of the difference
)
HEURISTIC_SLACK_POINTS = 0.5  # top-1 points the searched networks may trail the heuristic by
LATENCY_TOLERANCE = 0.10  # the searched networks' measured latency within +-10% of the target
MAX_TABLE_MAPE_PERCENT = 15.0  # the table's error on the evaluated networks

CONDITIONS = ("beats_random", "not_below_heuristic", "not_dominated", "on_target", "table_accurate")


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); 0 for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def network_stats(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per network (in record order): its seeds' mean and std of top-1 and measured latency."""
    out = []
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name]
        top1 = [r["top1"] for r in mine]
        ms = [r["measured_latency_ms"] for r in mine]
        out.append(
            {
                "name": name,
                "kind": mine[0]["kind"],
                "ops": mine[0]["ops"],
                "predicted_latency_ms": mine[0]["predicted_latency_ms"],
                "n": len(mine),
                "top1_mean": round(float(np.mean(top1)), 4),
                "top1_std": round(_std(top1), 4),
                "measured_latency_ms": round(float(np.mean(ms)), 4),
                "measured_latency_std": round(_std(ms), 4),
            }
        )
    return out


def _finite(value: float) -> float | None:
    """JSON has no inf or NaN: those are written as null (the ``rankable`` flag says what they meant)."""
    return round(float(value), 4) if math.isfinite(value) else None


def anova(groups: Sequence[Sequence[float]], alpha: float = ALPHA) -> dict[str, Any]:
    """One-way ANOVA of ``groups`` (one per network: its seeds' top-1).

    ``F = MS_between / MS_within`` with ``MS_between = sum_i n_i (mean_i - mean)^2 / (k - 1)`` and
    ``MS_within = sum_i sum_j (x_ij - mean_i)^2 / (N - k)``; ``rankable`` when F exceeds the
    ``1 - alpha`` quantile of F(k - 1, N - k). Without seed noise (``MS_within = 0``) F is infinite when
    the networks differ, undefined (not rankable) when they do not. Needs two groups and more values
    than groups.
    """
    groups = [np.asarray(g, float) for g in groups]
    k, n = len(groups), sum(len(g) for g in groups)
    if k < 2 or n <= k:
        raise ValueError(
            f"the F test needs at least 2 networks and more records than networks, got {k} networks "
            f"and {n} records (train with at least 2 seeds)"
        )
    grand = np.concatenate(groups).mean()
    ss_between = float(sum(len(g) * (g.mean() - grand) ** 2 for g in groups))
    ss_within = float(sum(((g - g.mean()) ** 2).sum() for g in groups))
    df_between, df_within = k - 1, n - k
    ms_between, ms_within = ss_between / df_between, ss_within / df_within
    if ms_within > 0:
        f = ms_between / ms_within
    else:
        f = math.inf if ms_between > 0 else math.nan
    from scipy.stats import f as f_dist

    f_crit = float(f_dist.ppf(1 - alpha, df_between, df_within))
    return {
        "f": _finite(f),
        "df_between": df_between,
        "df_within": df_within,
        "f_crit": round(f_crit, 4),
        "alpha": alpha,
        "ms_between": round(ms_between, 4),
        "ms_within": round(ms_within, 4),
        "rankable": bool(f > f_crit),  # False for NaN
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, top-1) points no other point beats: none faster and at least as
    accurate, none as fast and more accurate; latency ascending."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _condition(value: Any, needed: str, passed: bool | None, **extra: Any) -> dict[str, Any]:
    return {"value": value, "needed": needed, "passed": passed, **extra}


def verdict(
    records: Sequence[dict[str, Any]],
    target_latency_ms: float | None,
    table_mape_percent: float,
    ranking: dict[str, Any],
    synthetic: bool = False,
) -> dict[str, Any]:
    """The rule, computed from the records (each value rounded to 4 decimals).

    1. ``beats_random``: ``mean_s - mean_r > 2 * sqrt(s_s^2 / n_s + s_r^2 / n_r)``, with ``mean_s``,
       ``s_s`` (ddof 1) and ``n_s`` over every searched record (each search seed and training seed),
       ``mean_r`` the mean of the random networks' per-network means, ``s_r`` their std and ``n_r``
       the number of random networks;
    2. ``not_below_heuristic``: ``mean_heuristic - mean_s <= 0.5`` points;
    3. ``not_dominated``: no other network (its seeds' mean top-1 and measured latency) is both faster
       than the searched records' mean latency and more accurate than ``mean_s``;
    4. ``on_target``: the searched records' mean measured latency within +-10% of the target (skipped,
       ``passed`` None, without a target);
    5. ``table_accurate``: the table's MAPE on the evaluated networks <= 15%.

    ``verdict`` is ``"synthetic: no verdict"`` for a synthetic proxy, else ``"not measurable"`` when
    ``ranking`` (:func:`anova`) says the proxy cannot rank the random networks, else ``"met"`` or
    ``"not met: <failed conditions>"``.
    """
    searched = [r for r in records if r["kind"] == "searched"]
    heuristic = [r["top1"] for r in records if r["kind"] == "heuristic"]
    nets = network_stats(records)
    random_means = [n["top1_mean"] for n in nets if n["kind"] == "random"]
    if len(searched) < 2 or len(random_means) < 2 or not heuristic:
        raise ValueError(
            "the verdict needs at least 2 searched records, 2 random networks and the heuristic"
        )
    top1_s = [r["top1"] for r in searched]
    mean_s, s_s, n_s = float(np.mean(top1_s)), _std(top1_s), len(top1_s)
    mean_r, s_r, n_r = float(np.mean(random_means)), _std(random_means), len(random_means)
    margin = STANDARD_ERRORS * math.sqrt(s_s**2 / n_s + s_r**2 / n_r)
    gap = mean_s - mean_r
    ms_s = float(np.mean([r["measured_latency_ms"] for r in searched]))
    trail = float(np.mean(heuristic)) - mean_s
    dominating = [
        n["name"]
        for n in nets
        if n["kind"] != "searched" and n["measured_latency_ms"] < ms_s and n["top1_mean"] > mean_s
    ]
    conditions = {
        "beats_random": _condition(
            round(gap, 4), f"> {margin:.4f} (2 standard errors)", bool(gap > margin)
        ),
        "not_below_heuristic": _condition(
            round(trail, 4),
            f"heuristic - searched <= {HEURISTIC_SLACK_POINTS}",
            bool(trail <= HEURISTIC_SLACK_POINTS),
        ),
        "not_dominated": _condition(
            dominating, "no network faster and more accurate", not dominating
        ),
    }
    if target_latency_ms:
        off = ms_s / target_latency_ms - 1
        conditions["on_target"] = _condition(
            round(off, 4),
            f"|measured / target - 1| <= {LATENCY_TOLERANCE}",
            bool(abs(off) <= LATENCY_TOLERANCE),
        )
    else:
        conditions["on_target"] = _condition(None, "skipped: the runs had no latency target", None)
    conditions["table_accurate"] = _condition(
        round(table_mape_percent, 4),
        f"MAPE <= {MAX_TABLE_MAPE_PERCENT}%",
        bool(table_mape_percent <= MAX_TABLE_MAPE_PERCENT),
    )
    failed = [name for name in CONDITIONS if conditions[name]["passed"] is False]
    if synthetic:
        text = "synthetic: no verdict"
    elif not ranking["rankable"]:
        text = "not measurable"
    elif failed:
        text = "not met: " + ", ".join(failed)
    else:
        text = "met"
    return {
        "searched_top1_mean": round(mean_s, 4),
        "searched_top1_std": round(s_s, 4),
        "searched_records": n_s,
        "random_top1_mean": round(mean_r, 4),
        "random_top1_std": round(s_r, 4),
        "random_networks": n_r,
        "margin": round(margin, 4),
        "heuristic_top1_mean": round(float(np.mean(heuristic)), 4),
        "searched_measured_latency_ms": round(ms_s, 4),
        "target_latency_ms": target_latency_ms or None,
        "conditions": conditions,
        "failed": failed,
        "verdict": text,
    }
