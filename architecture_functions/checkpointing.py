"""What an architecture run keeps and restores: its checkpoint, the architecture in it, resumption.

A checkpoint (:func:`checkpoint_state`) holds the model, optimizer, scheduler, GradScaler, every RNG
state, the configuration and the architecture; a resumed run rebuilds the network from the saved
architecture without reading any file the user may since have changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fbnet_building_blocks.arch_specs import ArchSpec, load_arch
from general_functions.checkpoint import CheckpointError
from general_functions.config_utils import config_to_dict, given_fields
from general_functions.distributed import unwrap
from general_functions.run_folder import remove_stale_temp_files, repair_best
from general_functions.utils import get_rng_state

from .config_for_arch import ArchTrainConfig

__all__ = [
    "PER_RUN",
    "RESET",
    "STAGE",
    "arch_from",
    "check_arch_matches",
    "checkpoint_state",
    "tidy_resumed_run",
]

STAGE = "architecture"


def _spec_identity(spec: dict[str, Any], search_space: str) -> dict[str, Any]:
    """What must agree between a checkpoint and the model it is loaded into."""
    return {
        "ops": list(spec["ops"]),
        "search_space": search_space or spec.get("search_space"),
        "head_channels": spec.get("head_channels"),
        "width_mult": spec.get("width_mult", 1.0),
    }


def check_arch_matches(state: dict[str, Any], spec: ArchSpec, cfg: ArchTrainConfig, path) -> None:
    """Refuse a checkpoint of another architecture (or the same ops in another search space)."""
    saved_spec = state.get("arch_spec")
    if not isinstance(saved_spec, dict) or "ops" not in saved_spec:
        raise CheckpointError(f"checkpoint {path} records no architecture; cannot check it")
    saved_cfg = state.get("config") or {}
    saved = _spec_identity(saved_spec, saved_cfg.get("search_space", ""))
    wanted = _spec_identity(spec.to_dict(), cfg.search_space)
    if saved != wanted:
        diff = [k for k in wanted if saved[k] != wanted[k]]
        raise CheckpointError(
            f"checkpoint {path} holds architecture {saved_spec.get('name')!r} "
            f"(search space {saved['search_space']!r}), but this run builds {spec.name!r} "
            f"(search space {wanted['search_space']!r}); they differ in {', '.join(diff)}. "
            f"Pass --architecture_name {saved_spec.get('name')} (and the same --search_space) "
            "or another checkpoint"
        )


def checkpoint_state(
    cfg,
    spec,
    model,
    optimizer,
    scheduler,
    scaler,
    epoch,
    best_top1,
    best_epoch,
    wall_s,
    last,
    rng_ranks=None,
) -> dict[str, Any]:
    return {
        "stage": STAGE,
        "epoch": epoch,
        "model": unwrap(model).state_dict(),  # no DDP "module." prefix
        "optimizers": {"w": optimizer.state_dict()},
        "schedulers": {"w": scheduler.state_dict()},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "config": config_to_dict(cfg),
        "arch_spec": spec.to_dict(),
        "best_top1": best_top1,
        "best_epoch": best_epoch,
        "last_metrics": last,
        "wall_s": wall_s,
        "rng": get_rng_state(),
        "rng_ranks": rng_ranks,  # every process's RNG state under DDP (None alone)
    }


# Fields a resumed run may set anew: where the data and the run lie and how to run, not what to
# learn. The architecture fields are checked against the checkpoint's architecture instead.
PER_RUN = (
    "architecture_name",
    "search_space",
    "data_dir",
    "download",
    "device",
    "threads",
    "workers",
    "progress",
    "channels_last",
    "trim_kernels",
    "deterministic",
    "eval_batch_size",
    "dist_timeout_min",
    "run_dir",
    "run_name",
)
# Fields of one invocation: never taken from the checkpoint.
RESET = {
    "resume": "",
    "checkpoint": "",
    "eval_only": False,
    "stop_after_epoch": 0,
    "overwrite": False,
}


def arch_from(cfg: ArchTrainConfig, state: dict | None, path: str) -> ArchSpec:
    """The checkpoint's architecture, or ``--architecture_name`` when given (checked against it)."""
    if state is not None and "architecture_name" not in given_fields(cfg):
        spec = ArchSpec.from_dict(state["arch_spec"])
    else:
        spec = load_arch(cfg.architecture_name)
    if state is not None:
        check_arch_matches(state, spec, cfg, path)
    return spec


def tidy_resumed_run(run_dir: Path, state: dict[str, Any], log: logging.Logger) -> None:
    """What a kill may have left: temporary files, and a best.pth older than last.pth says."""
    remove_stale_temp_files(run_dir)
    repair_best(run_dir, state, log)
