"""Build or validate a cost lookup table (latency, FLOPs or parameters) from the command line.

    python supernet_main_file.py --train_or_sample build_lut --lut_path luts/my_cpu.json --threads 2
    python supernet_main_file.py --train_or_sample validate_lut --lut_path luts/my_cpu.json --num_archs 20
    python -m supernet_functions.latency.cli --train_or_sample build_lut --cost flops --lut_path luts/f.json

``build_lut`` writes the table and appends to ``<path stem>.build.log``; it refuses an existing table
unless ``--overwrite``. ``validate_lut`` measures random and named architectures end to end, writes
``<path stem>.validation.json`` and ``.png`` (or ``--report_path``), and prints one JSON line with
``pearson_r``, ``kendall_tau``, ``mape_percent`` and ``num_archs`` as its last line of stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fbnet_building_blocks.structure import Structure
from general_functions import run_options
from general_functions.config_utils import config_to_dict, opt, parse_config
from general_functions.logging_utils import get_logger
from supernet_functions.latency.measure import (
    ALLOCATORS,
    DEFAULT_TIME_BUDGET_S,
    build_cost_table,
    build_lut,
)
from supernet_functions.latency.table import COSTS, LatencyLookupTable, LUTError
from supernet_functions.latency.validate import (
    DEFAULT_VAL_ROUNDS,
    plot_report,
    save_report,
    validate_lut,
)

__all__ = ["LUTConfig", "main", "report_paths"]

# the modes of supernet_main_file.py that this tool runs, with its own flags
LUT_MODES = ("build_lut", "validate_lut")


@dataclass
class LUTConfig:
    train_or_sample: str = opt("build_lut", "what to do", choices=LUT_MODES)
    lut_path: str = opt("", "the table's JSON path (written by build_lut, read by validate_lut)")
    overwrite: bool = opt(False, "build_lut: replace an existing table at --lut_path")
    cost: str = opt("latency", "what the table holds", choices=tuple(COSTS))
    search_space: str = opt("fbnet", "search space: fbnet | fbnet_cifar | tiny")
    input_size: int = opt(0, "input side in pixels; 0 = the search space's default")
    lut_batch_size: int = opt(1, "batch size the latency is measured at", "paper: batch 1")
    cnt_classes: int = opt(0, "classifier width; 0 = 10 for inputs up to 64 px, else 1000")
    dw_bn_relu: bool = opt(
        False,
        "build: price blocks with BN + ReLU after the depthwise conv (paper); False: bare, as the "
        "trainer builds by default (fbnet_building_blocks/structure.py)",
    )
    head: str = opt(
        "conv_bias",
        "build: the head priced: conv_bias (the trainer's default) | conv_bn_relu (paper) | conv_bn",
        choices=("conv_bias", "conv_bn_relu", "conv_bn"),
    )
    head_channels: int = opt(1504, "build: width of the 1x1 head conv priced")
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
    lut_time_budget_s: float = opt(
        DEFAULT_TIME_BUDGET_S, "build: seconds of measuring when --lut_rounds is 0"
    )
    lut_rounds: int = opt(0, "build: measuring rounds (every entry once each); 0 = from the budget")
    reps: int = opt(3, "build and validation: timed passes per network per round")
    normalize_rounds: bool = opt(True, "scale each round to the median round's machine speed")
    allocator: str = opt(
        "",
        "C allocator while timing: default (glibc as it is, as in a user's process) | keep_heap "
        "(freed memory stays in the heap: no page faults in the timings); empty: build default, "
        "validate the table's",
        choices=("", *ALLOCATORS),
    )
    num_archs: int = opt(20, "validation: random architectures (the named ones are added)")
    named_archs: bool = opt(True, "validation: add the named architectures that fit the table")
    val_rounds: int = opt(DEFAULT_VAL_ROUNDS, "validation: interleaved measuring rounds")
    report_path: str = opt("", "validation report JSON; '' = <lut_path stem>.validation.json")
    progress: bool = run_options.progress()

    # the names the search uses for the same settings of a table it measures (--batch_size there is
    # the search's); the old names here keep working, with one warning
    DEPRECATED_NAMES: ClassVar[dict[str, str]] = {
        "batch_size": "lut_batch_size",
        "time_budget_s": "lut_time_budget_s",
        "rounds": "lut_rounds",
    }
    # checked by config_utils, whatever set the value
    BOUNDS: ClassVar[dict[str, str]] = {
        "input_size": "[0, inf)",
        "lut_batch_size": "[1, inf)",
        "cnt_classes": "[0, inf)",
        "head_channels": "[1, 65536]",
        "threads": "[0, inf)",
        "lut_time_budget_s": "(0, inf)",
        "lut_rounds": "[0, inf)",
        "reps": "[1, inf)",
        "num_archs": "[0, inf)",
        "val_rounds": "[1, inf)",
    }


def report_paths(cfg: LUTConfig) -> tuple[Path, Path]:
    """Where the validation report and its scatter plot go."""
    if cfg.report_path:
        report = Path(cfg.report_path)
    else:
        lut = Path(cfg.lut_path)
        report = lut.with_name(lut.stem + ".validation.json")
    return report, report.with_suffix(".png")


def _build(cfg: LUTConfig, argv: list[str]) -> dict:
    path = Path(cfg.lut_path)
    if path.exists() and not cfg.overwrite:
        raise SystemExit(
            f"error: {path} already exists: pass --overwrite to replace it, or another --lut_path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    log = get_logger(None, "fbnet.lut")
    # appended to, never truncated: the log of the table being replaced stays readable above
    handler = logging.FileHandler(path.with_name(path.stem + ".build.log"), mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    pkg_logger = logging.getLogger("supernet_functions")
    pkg_logger.setLevel(logging.INFO)
    pkg_logger.addHandler(handler)
    try:
        log.info("build_lut config: %s", json.dumps(config_to_dict(cfg)))
        shape = dict(
            search_space=cfg.search_space,
            input_size=cfg.input_size or None,
            batch_size=cfg.lut_batch_size,
            cnt_classes=cfg.cnt_classes or None,
            structure=Structure.from_config(cfg),
        )
        if cfg.cost != "latency":
            lut = build_cost_table(cfg.cost, **shape)
        else:
            lut = build_lut(
                device=cfg.device or "cpu",
                threads=cfg.threads or os.cpu_count() or 1,
                rounds=cfg.lut_rounds,
                time_budget_s=cfg.lut_time_budget_s,
                reps=cfg.reps,
                normalize_rounds=cfg.normalize_rounds,
                seed=cfg.seed,
                allocator=cfg.allocator or "default",
                progress=cfg.progress,
                **shape,
            )
        lut.meta["command"] = "build_lut " + " ".join(argv)
        lut.save(path)
        log.info("wrote %s: %s", path, lut.describe())
        if lut.cost == "latency":
            log.info("round speed: %s", lut.meta.get("round_speed"))
            log.info("fastest op per layer: %s", " ".join(lut.fastest_ops()))
    finally:
        log.removeHandler(handler)
        pkg_logger.removeHandler(handler)
        handler.close()
    return {"lut_path": str(path), "cost": lut.cost, "build_time_s": lut.meta.get("build_time_s")}


def _validate(cfg: LUTConfig) -> dict:
    log = get_logger(None, "fbnet.lut")
    try:
        lut = LatencyLookupTable.load(cfg.lut_path)
        log.info("validating %s: %s", cfg.lut_path, lut.describe())
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
        )
    except LUTError as err:  # a bad file, or a CUDA table on a machine without CUDA
        raise SystemExit(f"error: {err}") from None
    report_json, report_png = report_paths(cfg)
    save_report(report, report_json)
    plot_report(report, report_png)
    log.info("wrote %s and %s", report_json, report_png)
    keys = ("pearson_r", "kendall_tau", "spearman_rho", "mape_percent", "max_ape_percent")
    out = {k: report[k] for k in keys}
    out.update(num_archs=report["num_archs"], cost=report["cost"], report=str(report_json))
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the command in ``argv`` (``sys.argv[1:]`` by default); returns what it printed as JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(LUTConfig, argv, description=__doc__)
    if not cfg.lut_path:
        raise SystemExit("error: --lut_path is required")
    out = _build(cfg, argv) if cfg.train_or_sample == "build_lut" else _validate(cfg)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
