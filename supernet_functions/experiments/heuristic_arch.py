"""The heuristic baseline of a search: the architecture with the most parameters under a latency budget.

A search earns its cost only if it beats what a designer gets for free. The free rule used here: spend the
latency budget on capacity, i.e. pick, among the architectures whose predicted latency (the table's sum,
paper Eq. 4, plus the fixed parts) is at most ``budget``, the one with the most parameters.

Parameters, like the table's latencies, add up over layers: a network's count is the sum of its ops'
counts plus the fixed parts (a parameter table, :func:`~supernet_functions.latency.measure.
build_cost_table` ``("params", ...)``, for the same search space, input size and structure). So the
choice is a multiple-choice knapsack, solved exactly by dynamic programming over layers on the Pareto
front of (latency, parameters) partial sums: after each layer only the partial architectures that no
other one beats in both (lower or equal latency and more or equal parameters) are kept; the best
architecture within the budget is on the last front. The front stays small (303 points after the 22
layers of ``luts/fbnet_32_cpu.json`` with its parameter table), so nothing is discretised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from supernet_functions.latency.random_archs import cost_matrix

__all__ = ["most_params_within_latency", "pareto_partial_sums"]


def pareto_partial_sums(
    latency: np.ndarray, params: np.ndarray, budget: float
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The Pareto front of whole-architecture (latency, parameter) sums within ``budget``.

    ``latency`` and ``params`` are ``[layers, ops]``. Returns the front's latencies and parameter
    counts (latency ascending, parameters strictly ascending) and, per layer, the back-pointers
    ``(previous front index, op index)`` of every point of that layer's front.
    """
    front_lat, front_par = np.zeros(1), np.zeros(1)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    num_ops = latency.shape[1]
    # the cheapest completion of the layers still to come: a partial sum above budget - rest is lost
    rest = np.concatenate([np.cumsum(latency.min(axis=1)[::-1])[::-1][1:], [0.0]])
    for layer in range(latency.shape[0]):
        lat = (front_lat[:, None] + latency[layer][None, :]).ravel()
        par = (front_par[:, None] + params[layer][None, :]).ravel()
        prev = np.repeat(np.arange(len(front_lat)), num_ops)
        op = np.tile(np.arange(num_ops), len(front_lat))
        alive = lat <= budget - rest[layer] + 1e-12 * max(abs(budget), 1.0)
        lat, par, prev, op = lat[alive], par[alive], prev[alive], op[alive]
        order = np.lexsort((-par, lat))  # latency ascending, the most parameters first on ties
        lat, par, prev, op = lat[order], par[order], prev[order], op[order]
        best_before = np.maximum.accumulate(np.concatenate([[-np.inf], par[:-1]]))
        keep = par > best_before  # more parameters than every cheaper (or equal) one
        front_lat, front_par = lat[keep], par[keep]
        back.append((prev[keep], op[keep]))
    return front_lat, front_par, back


def most_params_within_latency(
    lut, params_table, candidate_ops: Sequence[str], budget: float
) -> tuple[list[str], float, float]:
    """The architecture with the most parameters whose predicted whole-network latency is <= ``budget``.

    Returns ``(ops, predicted latency, parameters)`` in the tables' units (fixed parts included). Among
    architectures with equally many parameters, the faster one. Raises ``ValueError`` when even the
    cheapest architecture of the table costs more than ``budget``.
    """
    if params_table.num_layers != lut.num_layers:
        raise ValueError(
            f"the parameter table has {params_table.num_layers} layers, the latency table "
            f"{lut.num_layers}"
        )
    latency = cost_matrix(lut, candidate_ops)
    params = cost_matrix(params_table, candidate_ops)
    layers_budget = budget - lut.fixed_cost
    front_lat, front_par, back = pareto_partial_sums(latency, params, layers_budget)
    if len(front_lat) == 0:
        cheapest = latency.min(axis=1).sum() + lut.fixed_cost
        raise ValueError(
            f"no architecture of the table is predicted at or below {budget:.4g} "
            f"{lut.meta.get('unit', 'ms')}: the cheapest costs {cheapest:.4g}"
        )
    point = len(front_lat) - 1  # the most parameters of all that fit
    index = []
    for prev, op in reversed(back):
        index.append(int(op[point]))
        point = int(prev[point])
    ops = [candidate_ops[k] for k in reversed(index)]
    return ops, lut.predict(ops), params_table.predict(ops)
