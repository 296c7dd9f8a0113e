"""The runs and the networks of a search-vs-random evaluation (:mod:`supernet_functions.experiments.evaluate_search`).

:func:`read_runs` reads and checks the search runs of one evaluation: each is a complete run folder
(``thetas.json``, ``lut.json``, ``config.json``) whose table priced the structure and input size it
searched with, and all share one table, search space and latency target. :func:`make_plan` picks the
networks: every run's argmax ("searched"); random architectures uniform within a window of the
argmaxes' mean predicted latency, the centre (:func:`~supernet_functions.latency.random_archs.
sample_within_latency`); the architecture with the most parameters predicted at or below the centre
("heuristic", :func:`~supernet_functions.experiments.heuristic_arch.most_params_within_latency`, with a parameter
table of the same search space, input size and structure); FBNet-A/B/C where they fit the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbnet_building_blocks.arch_specs import ARCHS
from fbnet_building_blocks.structure import Structure
from supernet_functions.experiments.heuristic_arch import most_params_within_latency
from supernet_functions.latency.measure import build_cost_table
from supernet_functions.latency.random_archs import cost_matrix, sample_within_latency
from supernet_functions.latency.table import LatencyLookupTable, LUTError, default_cnt_classes
from supernet_functions.sampling import LUT_FILE, THETAS_FILE, read_thetas

__all__ = ["CONFIG_FILE", "NAMED", "SearchRun", "cheapest_latency", "make_plan", "read_runs"]

CONFIG_FILE = "config.json"
NAMED = ("fbnet_a", "fbnet_b", "fbnet_c")


@dataclass
class SearchRun:
    """A search run folder as the evaluation reads it."""

    path: Path
    state: dict[str, Any]  # thetas.json
    config: dict[str, Any]  # config.json
    lut: LatencyLookupTable

    @property
    def target_latency_ms(self) -> float:
        return float(self.config.get("target_latency_ms") or 0.0)


def _check_run_structure(run: SearchRun) -> None:
    """A run's table must price the structure and input size its config searched with."""
    config, lut = run.config, run.lut
    named = [k for k in ("dw_bn_relu", "head", "head_channels") if config.get(k) is not None]
    if len(named) == 3:  # configs written before the structure was an option name none
        searched = Structure(
            bool(config["dw_bn_relu"]), config["head"], int(config["head_channels"])
        )
        if searched != lut.structure:
            raise LUTError(
                f"{run.path}/{LUT_FILE} priced {lut.structure.describe()}, but the run's "
                f"{CONFIG_FILE} searched {searched.describe()}: not this run's table"
            )
    size = config.get("input_size") or run.state.get("input_size")
    table_size = lut.meta.get("input_size")
    if size and table_size and size != table_size:
        raise LUTError(
            f"{run.path}/{LUT_FILE} was measured at input size {table_size}, but the run's "
            f"{CONFIG_FILE} searched at {size}: not this run's table"
        )


def read_runs(paths: list[str]) -> list[SearchRun]:
    """The search runs of one evaluation, checked: each a complete run whose table prices what it
    searched, all with one table, search space and latency target. Problems are one-line errors."""
    runs = []
    for given in paths:
        path = Path(given)
        for name in (THETAS_FILE, LUT_FILE, CONFIG_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a search run folder: it has no {name}")
        lut = LatencyLookupTable.load(path / LUT_FILE)
        if lut.cost != "latency":
            raise LUTError(
                f"{path}/{LUT_FILE} is a {lut.cost} table: the evaluation compares predicted with "
                "measured latency and needs a latency table"
            )
        config = json.loads((path / CONFIG_FILE).read_text())
        run = SearchRun(path, read_thetas(path), config, lut)
        _check_run_structure(run)
        runs.append(run)
    first = runs[0]
    for run in runs[1:]:
        differ = []
        if run.lut.to_dict() != first.lut.to_dict():
            differ.append("their lut.json (another table)")
        if (run.state["search_space"], run.state["candidate_ops"]) != (
            first.state["search_space"],
            first.state["candidate_ops"],
        ):
            differ.append(
                f"search space ({first.state['search_space']} vs {run.state['search_space']})"
            )
        if run.target_latency_ms != first.target_latency_ms:
            differ.append(
                f"target_latency_ms ({first.target_latency_ms:g} vs {run.target_latency_ms:g})"
            )
        if differ:
            raise ValueError(
                f"{first.path} and {run.path} are not runs of one target: they differ in "
                f"{'; '.join(differ)}. Evaluate each target with its own --runs"
            )
    return runs


def cheapest_latency(lut: LatencyLookupTable, ops: list[str]) -> float:
    """The predicted latency of the table's cheapest architecture (every layer's cheapest op)."""
    return float(cost_matrix(lut, ops).min(axis=1).sum() + lut.fixed_cost)


def _params_table(lut: LatencyLookupTable, space: str, ops: list[str]) -> LatencyLookupTable:
    """The parameter table of the latency table's search space, input size and structure."""
    size = lut.meta.get("input_size")
    classes = lut.meta.get("cnt_classes") or default_cnt_classes(size or 32)
    return build_cost_table(
        "params", space, size, 1, classes, structure=lut.structure, candidate_ops=ops
    )


def make_plan(runs: list[SearchRun], num_random: int, window: float, seed: int) -> dict[str, Any]:
    """The networks to train: the runs' argmaxes, random ones and the heuristic at their mean predicted
    latency, the named ones that fit the table."""
    lut, state = runs[0].lut, runs[0].state
    ops_all = list(state["candidate_ops"])
    nets = [
        {"name": f"searched_{i}", "kind": "searched", "ops": list(r.state["argmax_ops"])}
        for i, r in enumerate(runs, 1)
    ]
    for net, run in zip(nets, runs):
        net["run"] = str(run.path)
    centre = sum(lut.predict(n["ops"]) for n in nets) / len(nets)
    found, draws = sample_within_latency(
        lut, ops_all, centre, window, num_random, seed, exclude=[n["ops"] for n in nets]
    )
    nets += [
        {"name": f"random_{i}", "kind": "random", "ops": o} for i, (o, _) in enumerate(found, 1)
    ]
    params = _params_table(lut, state["search_space"], ops_all)
    ops, _, params_m = most_params_within_latency(lut, params, ops_all, centre)
    nets.append({"name": "heuristic", "kind": "heuristic", "ops": ops, "params_m": params_m})
    known = set.intersection(*(set(layer) for layer in lut.layers))
    for name in NAMED:  # the named networks where they fit the table
        spec = ARCHS[name]
        if len(spec.ops) == lut.num_layers and set(spec.ops) <= known:
            nets.append({"name": name, "kind": "named", "ops": list(spec.ops)})
    for net in nets:
        net["predicted_latency_ms"] = round(lut.predict(net["ops"]), 5)
        if "params_m" not in net:
            net["params_m"] = round(params.predict(net["ops"]), 6)
    return {
        "runs": [str(r.path) for r in runs],
        "search_space": state["search_space"],
        "target_latency_ms": runs[0].target_latency_ms or None,
        "structure": lut.structure.to_dict(),
        "centre_ms": round(centre, 5),
        "window": window,
        "random_seed": seed,
        "random_proposals": draws,
        "networks": nets,
    }
