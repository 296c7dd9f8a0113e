"""What an architecture run keeps, restores and reports: where it stands, its checkpoint, the
architecture in it, resumption, and its summary.

A checkpoint (:func:`checkpoint_state`) holds the model, optimizer, scheduler, every RNG
state, the configuration and the architecture; a resumed run rebuilds the network from the saved
architecture without reading any file the user may since have changed.
"""

from __future__ import annotations

from typing import Any

from fbnet_building_blocks.arch_specs import ArchSpec, load_arch
from general_functions.checkpoint import CheckpointError
from general_functions.config_utils import config_to_dict, given_fields
from general_functions.distributed import unwrap
from general_functions.run_folder import ONE_INVOCATION, Progress
from general_functions.utils import get_rng_state

from .config_for_arch import ArchTrainConfig

__all__ = [
    "PER_RUN",
    "RESET",
    "STAGE",
    "Progress",
    "arch_from",
    "check_arch_matches",
    "checkpoint_state",
    "summarize",
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


def summarize(metrics: dict[str, float], best_top1, best_epoch, epoch, wall_s, run_dir, spec):
    """The run's summary: the JSON line the entry script prints last."""
    out = {
        "architecture": spec.name,
        "best_top1": round(best_top1, 3),
        "best_epoch": best_epoch,
        "best_chosen_on": "test set",
        "final_top1": round(metrics["test/top1"], 3),
        "final_top3": round(metrics["test/top3"], 3),
        "epochs": epoch,
        "wall_s": round(wall_s, 1),
        "run_dir": str(run_dir) if run_dir else None,
    }
    if "test_exact1000/top1" in metrics:
        out["final_exact1000_top1"] = round(metrics["test_exact1000/top1"], 3)
        out["final_exact1000_top3"] = round(metrics["test_exact1000/top3"], 3)
    return out


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


def checkpoint_state(cfg, spec: ArchSpec, parts, progress, rng_ranks=None) -> dict[str, Any]:
    """The checkpoint of a run (``parts`` of ``training_functions._build``) at ``progress``."""
    return {
        "stage": STAGE,
        "epoch": progress.epoch,
        "model": unwrap(parts.model).state_dict(),  # no DDP "module." prefix
        "optimizers": {"w": parts.optimizer.state_dict()},
        "schedulers": {"w": parts.scheduler.state_dict()},
        "config": config_to_dict(cfg),
        "arch_spec": spec.to_dict(),
        "best_top1": progress.best_top1,
        "best_epoch": progress.best_epoch,  # last.pth is written first: see run_folder.repair_best
        "last_metrics": progress.last,
        "wall_s": progress.wall_s,
        "rng": get_rng_state(),
        "rng_ranks": rng_ranks,  # every process's RNG state under DDP (None alone)
    }


# Fields a resumed run may set anew besides run_folder.HOW_TO_RUN; the architecture fields are
# checked against the checkpoint's architecture instead (arch_from).
PER_RUN = ("architecture_name", "search_space", "eval_batch_size")
# Fields of one invocation: never taken from the checkpoint.
RESET = {**ONE_INVOCATION, "checkpoint": "", "eval_only": False}


def arch_from(cfg: ArchTrainConfig, state: dict | None, path: str) -> ArchSpec:
    """The checkpoint's architecture, or ``--architecture_name`` when given (checked against it)."""
    if state is not None and "architecture_name" not in given_fields(cfg):
        spec = ArchSpec.from_dict(state["arch_spec"])
    else:
        spec = load_arch(cfg.architecture_name)
    if state is not None:
        check_arch_matches(state, spec, cfg, path)
    return spec
