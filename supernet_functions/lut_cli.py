"""Build or validate a cost lookup table (latency, FLOPs or parameters) from the command line.

    python supernet_main_file.py --train_or_sample build_lut --lut_path luts/my_cpu.json \
        --search_space fbnet --input_size 224 --device cpu --threads 2
    python supernet_main_file.py --train_or_sample validate_lut --lut_path luts/my_cpu.json --num_archs 20
    python -m supernet_functions.lut_cli --train_or_sample build_lut --cost flops --lut_path luts/f.json

``build_lut`` writes the table (and ``<path stem>.build.log``); ``validate_lut`` measures random and
named architectures end to end, writes ``<path stem>.validation.json`` and ``.png`` (or
``--report_path``), and prints one JSON line with ``pearson_r``, ``kendall_tau``, ``mape_percent`` and
``num_archs`` as its last line of stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from general_functions.config_utils import config_to_dict, opt, parse_config
from general_functions.logging_utils import get_logger

from .lookup_table_builder import (
    ALLOCATORS,
    COSTS,
    DEFAULT_TIME_BUDGET_S,
    LatencyLookupTable,
    LUTError,
    build_cost_table,
    build_lut,
)
from .lut_validation import (
    DEFAULT_VAL_MAX_ROUNDS,
    DEFAULT_VAL_ROUNDS,
    plot_report,
    save_report,
    validate_lut,
)

__all__ = ["LUTConfig", "main", "report_paths"]


@dataclass
class LUTConfig:
    train_or_sample: str = opt(
        "build_lut", "what to do", choices=("build_lut", "validate_lut", "show_lut")
    )
    lut_path: str = opt("", "the table's JSON path (written by build_lut, read by validate_lut)")
    cost: str = opt("latency", "what the table holds", choices=tuple(COSTS))
    search_space: str = opt("fbnet", "search space: fbnet | fbnet_cifar | tiny")
    input_size: int = opt(0, "input side in pixels; 0 = the search space's default")
    batch_size: int = opt(1, "batch size the latency is measured at", "paper: batch 1")
    cnt_classes: int = opt(0, "classifier width; 0 = 10 for inputs up to 64 px, else 1000")
    device: str = opt(
        "",
        "cpu | cuda | auto; empty: build on the CPU, validate on the table's own device",
        choices=("", "cpu", "cuda", "auto"),
    )
    threads: int = opt(
        0,
        "CPU threads for measuring, recorded in the table; 0 = build: every core, validate: the table's",
    )
    seed: int = opt(0, "seed of the build's permutations and of the sampled architectures")
    time_budget_s: float = opt(
        DEFAULT_TIME_BUDGET_S, "build: seconds of measuring when --rounds is 0"
    )
    rounds: int = opt(0, "build: measuring rounds (every entry once each); 0 = from the budget")
    reps: int = opt(3, "build and validation: timed passes per network per round")
    method: str = opt(
        "in_network", "build: time ops inside networks or alone", choices=("in_network", "isolated")
    )
    normalize_rounds: bool = opt(True, "scale each round to the median round's machine speed")
    allocator: str = opt(
        "",
        "C allocator while timing: keep_heap (freed memory stays in the heap: no page faults in the "
        "timings) | default (glibc as it is); empty: build keep_heap, validate the table's",
        choices=("", *ALLOCATORS),
    )
    num_archs: int = opt(20, "validation: random architectures (the named ones are added)")
    named_archs: bool = opt(True, "validation: add the named architectures that fit the table")
    val_rounds: int = opt(DEFAULT_VAL_ROUNDS, "validation: interleaved measuring rounds")
    match_conditions: bool = opt(
        True,
        "validation: weigh the rounds to the build's mix of compute-probe states (CPU tables that "
        "kept probe_rounds); the figures over all rounds are reported beside",
    )
    val_max_rounds: int = opt(
        DEFAULT_VAL_MAX_ROUNDS,
        "validation with --match_conditions: measure past --val_rounds, up to this many rounds, "
        "while fewer than half of --val_rounds were made in the build's conditions",
    )
    report_path: str = opt("", "validation report JSON; '' = <lut_path stem>.validation.json")
    progress: bool = opt(True, "show progress bars")


def report_paths(cfg: LUTConfig) -> tuple[Path, Path]:
    """Where the validation report and its scatter plot go."""
    if cfg.report_path:
        report = Path(cfg.report_path)
    else:
        lut = Path(cfg.lut_path)
        report = lut.with_name(lut.stem + ".validation.json")
    return report, report.with_suffix(".png")


def _build(cfg: LUTConfig, log: logging.Logger) -> LatencyLookupTable:
    kwargs = dict(
        search_space=cfg.search_space,
        input_size=cfg.input_size or None,
        batch_size=cfg.batch_size,
        cnt_classes=cfg.cnt_classes or None,
    )
    if cfg.cost != "latency":
        return build_cost_table(cfg.cost, **kwargs)
    return build_lut(
        device=cfg.device or "cpu",
        threads=cfg.threads or os.cpu_count() or 1,
        rounds=cfg.rounds,
        time_budget_s=cfg.time_budget_s,
        reps=cfg.reps,
        normalize_rounds=cfg.normalize_rounds,
        seed=cfg.seed,
        method=cfg.method,
        allocator=cfg.allocator or "keep_heap",
        progress=cfg.progress,
        **kwargs,
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the command in ``argv`` (``sys.argv[1:]`` by default); returns what it printed as JSON."""
    cfg = parse_config(LUTConfig, argv, description=__doc__)
    if not cfg.lut_path:
        raise SystemExit("error: --lut_path is required")
    if cfg.train_or_sample == "validate_lut" and cfg.val_rounds < 1:
        raise SystemExit(f"error: --val_rounds must be at least 1, got {cfg.val_rounds}")
    if cfg.train_or_sample == "validate_lut" and cfg.match_conditions:
        if cfg.val_max_rounds < cfg.val_rounds:
            raise SystemExit(
                f"error: --val_max_rounds ({cfg.val_max_rounds}) must be at least --val_rounds "
                f"({cfg.val_rounds})"
            )
    path = Path(cfg.lut_path)
    if cfg.train_or_sample == "build_lut":
        path.parent.mkdir(parents=True, exist_ok=True)
        log = get_logger(None, "fbnet.lut")
        handler = logging.FileHandler(path.with_name(path.stem + ".build.log"), mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        pkg_logger = logging.getLogger("supernet_functions")
        pkg_logger.setLevel(logging.INFO)
        pkg_logger.addHandler(handler)
        log.info("build_lut config: %s", json.dumps(config_to_dict(cfg)))
        lut = _build(cfg, log)
        lut.meta["command"] = "build_lut " + " ".join(argv if argv is not None else sys.argv[1:])
        lut.save(path)
        log.info("wrote %s: %s", path, lut.describe())
        if lut.cost == "latency":
            log.info("round speed: %s", lut.meta.get("round_speed"))
            log.info("speed probes (ms): %s", lut.meta.get("probes"))
            log.info("fastest op per layer: %s", " ".join(lut.fastest_ops()))
        out = {
            "lut_path": str(path),
            "cost": lut.cost,
            "build_time_s": lut.meta.get("build_time_s"),
        }
        pkg_logger.removeHandler(handler)
        handler.close()
    else:
        log = get_logger(None, "fbnet.lut")
        try:
            lut = LatencyLookupTable.load(path)
        except LUTError as err:
            raise SystemExit(f"error: {err}") from None
        if cfg.train_or_sample == "show_lut":
            out = {"lut_path": str(path), "description": lut.describe(), "meta": lut.meta}
        else:
            log.info("validating %s: %s", path, lut.describe())
            try:
                report = validate_lut(
                    lut,
                    num_archs=cfg.num_archs,
                    seed=cfg.seed,
                    include_named=cfg.named_archs,
                    device=cfg.device or None,
                    threads=cfg.threads or None,
                    rounds=cfg.val_rounds,
                    reps=cfg.reps,
                    normalize_rounds=cfg.normalize_rounds,
                    allocator=cfg.allocator or None,
                    progress=cfg.progress,
                    match_conditions=cfg.match_conditions,
                    max_rounds=cfg.val_max_rounds,
                )
            except LUTError as err:  # e.g. a CUDA table on a machine without CUDA
                raise SystemExit(f"error: {err}") from None
            report_json, report_png = report_paths(cfg)
            save_report(report, report_json)
            plot_report(report, report_png)
            log.info("wrote %s and %s", report_json, report_png)
            keys = ("pearson_r", "kendall_tau", "spearman_rho", "mape_percent", "max_ape_percent")
            out = {k: report[k] for k in keys}
            out.update(num_archs=report["num_archs"], cost=report["cost"], report=str(report_json))
            val = report["validation"]
            if val.get("all_rounds"):  # the headline figures came from the matched rounds
                out["rounds_measured"] = val["rounds_measured"]
                out["matched_effective_rounds"] = val["matched"]["effective_rounds"]
                out["all_rounds"] = {k: val["all_rounds"][k] for k in keys[:4]}
            # the machine's memory / compute speed now against the build's (> 1: slower now)
            out.update({k: v for k, v in val.items() if k.startswith("probe_")})
            if val.get("conditions_differ"):
                out["conditions_differ"] = val["conditions_differ"]
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
