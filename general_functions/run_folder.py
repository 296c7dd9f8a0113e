"""A run folder's life, shared by both trainers: start it, resume it, keep its checkpoints consistent.

- :func:`start_run_dir` refuses a folder that already holds a run unless ``overwrite`` (then it removes
  that run's files first), so a new run never silently replaces an old one.
- :func:`resume_config` takes the recipe from the checkpoint: a field the user set that contradicts it is
  refused, naming both values; ``epochs`` may be raised, and the fields of where and how to run (the data
  folder, the device, when to stop) may differ. The run stays in its folder.
- :func:`remove_stale_temp_files` deletes what a kill during an atomic write left behind.
- :func:`repair_best` makes ``best.pth`` agree with ``last.pth``: ``last.pth`` is written first and
  records the best epoch, so a kill while ``best.pth`` was being written leaves a ``last.pth`` that is
  itself the best checkpoint, and the resumed run copies it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from .checkpoint import CheckpointError, load_checkpoint
from .config_utils import ConfigError, config_from_dict, given_fields
from .distributed import DistContext, run_on_main
from .io_utils import atomic_write

__all__ = [
    "HOW_TO_RUN",
    "ONE_INVOCATION",
    "RunExistsError",
    "extend_cosine",
    "new_run_dir",
    "remove_stale_temp_files",
    "repair_best",
    "resume_config",
    "resume_run",
    "start_run_dir",
    "tidy_resumed_run",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# files the trainers write into a run folder; any of the first group means the folder holds a run
RUN_MARKERS = ("last.pth", "best.pth", "config.json", "metrics.csv", "thetas.json", "arch.json")
RUN_FILES = (*RUN_MARKERS, "lut.json", "log.txt", "summary.json")
# atomic_write's temporary files: ".<name>.<random>.tmp" beside <name>
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


class RunExistsError(FileExistsError):
    """A new run was pointed at a folder that already holds one."""


def start_run_dir(log_dir: str | Path, run_name: str, prefix: str, overwrite: bool = False) -> Path:
    """``log_dir/run_name`` (time-stamped when no name is given), made ready for a new run.

    A folder that already holds a run (:data:`RUN_MARKERS`) is refused unless ``overwrite``; then the
    run's own files (:data:`RUN_FILES`, ``tb/``) are deleted first and nothing else is touched.
    """
    if run_name and ("/" in run_name or "\\" in run_name or run_name in (".", "..")):
        raise ValueError(f"run name {run_name!r} must not contain path separators")
    root = Path(log_dir)
    if not run_name:  # a second run started within the same second gets a suffix
        stamp = f"{prefix}_{datetime.now():%Y%m%d_%H%M%S}"
        run_name = next(
            name
            for name in (stamp, *(f"{stamp}_{i}" for i in range(1, 1000)))
            if not _holds_run(root / name)
        )
    run_dir = root / run_name
    found = _holds_run(run_dir)
    if found and not overwrite:
        hint = (
            f"continue it with --resume {run_dir / 'last.pth'}"
            if "last.pth" in found
            else "it has no last.pth to resume"
        )
        raise RunExistsError(
            f"run folder {run_dir} already holds a run ({', '.join(found)}): {hint}, choose another "
            "--run_name, or pass --overwrite to delete it and start again"
        )
    if found:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
        logger.warning("--overwrite: deleted the run in %s (%s)", run_dir, ", ".join(found))
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(run_dir)
    return run_dir


def _holds_run(folder: Path) -> list[str]:
    return [name for name in RUN_MARKERS if (folder / name).exists()]


def remove_stale_temp_files(run_dir: str | Path, log: logging.Logger = logger) -> list[Path]:
    """Delete the temporary files that a kill during an atomic write of a run file left behind."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        match = _TEMP.match(path.name)
        if match and match["name"] in RUN_FILES and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write", len(removed))
    return removed


def repair_best(run_dir: str | Path, last: dict[str, Any], log: logging.Logger = logger) -> None:
    """Make ``best.pth`` the checkpoint of the best epoch that ``last.pth`` (``last``) records.

    Only the case a kill can cause is repaired: the last epoch was the best, and ``best.pth`` (written
    after ``last.pth``) is missing or older; then ``last.pth`` is copied over it.
    """
    best_epoch = last.get("best_epoch")
    if best_epoch is None:
        return
    run_dir = Path(run_dir)
    best_path = run_dir / "best.pth"
    try:
        held = load_checkpoint(best_path).get("epoch") if best_path.exists() else None
    except CheckpointError:
        held = None
    if held == best_epoch:
        return
    if last["epoch"] != best_epoch:
        log.warning(
            "best.pth holds epoch %s, but the run's best is epoch %s and no checkpoint of it is left",
            held,
            best_epoch,
        )
        return
    with open(run_dir / "last.pth", "rb") as src:
        atomic_write(best_path, lambda dst: shutil.copyfileobj(src, dst))
    log.info(
        "best.pth held epoch %s; replaced it with last.pth (the best, epoch %s)", held, best_epoch
    )


# Fields of where and how a run runs, not of what it learns: a resumed run may set them anew.
HOW_TO_RUN = (
    "data_dir",
    "download",
    "device",
    "threads",
    "workers",
    "progress",
    "channels_last",
    "trim_kernels",
    "deterministic",
    "dist_timeout_min",
)
# Fields of one invocation: never taken from a checkpoint.
ONE_INVOCATION = {"resume": "", "stop_after_epoch": 0, "overwrite": False}


def resume_config(
    cfg: T,
    saved: dict[str, Any],
    path: str | Path,
    per_run: Iterable[str] = (),
    reset: dict[str, Any] | None = None,
    same_folder: bool = True,
) -> T:
    """The configuration of a resumed run: the checkpoint's ``saved`` one plus what the user set.

    A field the user set (:func:`given_fields`) must equal the saved value, except ``epochs``, which
    may be raised, and the :data:`HOW_TO_RUN` and ``per_run`` fields, which may differ. The ``reset``
    fields (default :data:`ONE_INVOCATION`) take the given value or the one in ``reset``, never the
    saved one. With ``same_folder`` the run stays in the folder of ``path``: ``log_dir`` and
    ``run_name`` become that folder's, and a given one naming another is refused. Raises
    :class:`ConfigError` naming each contradiction with both values.
    """
    reset = ONE_INVOCATION if reset is None else reset
    saved_cfg = config_from_dict(type(cfg), saved)
    given = given_fields(cfg)
    free = {*HOW_TO_RUN, *per_run, *reset, "log_dir", "run_name"}
    problems = []
    for key in sorted(given - free):
        now, then = getattr(cfg, key), getattr(saved_cfg, key)
        if key == "epochs" and now >= then or now == then:
            continue
        rule = " (it may only be raised)" if key == "epochs" else ""
        problems.append(f"--{key} {_show(now)} contradicts the checkpoint's {_show(then)}{rule}")
    values = {key: getattr(cfg, key) for key in given}
    values.update({key: getattr(cfg, key) if key in given else v for key, v in reset.items()})
    if same_folder:
        run_dir = Path(path).resolve().parent
        problems += _other_folder(cfg, given, run_dir)
        values.update(log_dir=str(run_dir.parent), run_name=run_dir.name)
    if problems:
        raise ConfigError(
            f"--resume {path}: " + "; ".join(problems) + ". A resumed run keeps its recipe and "
            "its folder: drop these flags, or start a new run"
        )
    out = dataclasses.replace(saved_cfg, **values)
    out._given = frozenset(given)  # what the user set stays known (see given_fields)
    return out


def _other_folder(cfg: Any, given: set[str], run_dir: Path) -> list[str]:
    """A given ``--run_name`` or ``--log_dir`` that names another folder than ``run_dir``."""
    problems = []
    if "run_name" in given and cfg.run_name != run_dir.name:
        problems.append(f"--run_name {cfg.run_name} names another folder than {run_dir.name}")
    if "log_dir" in given and Path(cfg.log_dir).resolve() != run_dir.parent:
        problems.append(f"--log_dir {cfg.log_dir} is not the run's folder {run_dir.parent}")
    return problems


def resume_run(cfg: T, stage: str, per_run: Iterable[str] = (), reset=None) -> tuple[T, dict]:
    """The configuration (:func:`resume_config`) and checkpoint of the run ``cfg.resume`` names."""
    state = load_checkpoint(cfg.resume, stage=stage)
    return resume_config(cfg, state["config"], cfg.resume, per_run, reset), state


def new_run_dir(cfg: Any, ctx: DistContext, prefix: str) -> Path:
    """Rank 0 makes the run folder (:func:`start_run_dir`); every rank gets its path."""
    return Path(
        run_on_main(
            ctx, lambda: str(start_run_dir(cfg.log_dir, cfg.run_name, prefix, cfg.overwrite))
        )
    )


def tidy_resumed_run(run_dir: Path, state: dict[str, Any], log: logging.Logger) -> None:
    """What a kill may have left: temporary files, and a best.pth older than last.pth says."""
    remove_stale_temp_files(run_dir, log)
    repair_best(run_dir, state, log)


def extend_cosine(scheduler, epochs: int) -> None:
    """A cosine schedule resumed with more ``epochs`` decays from where it is to the new end.

    (PyTorch's cosine is recursive: with the new period the remaining steps follow a cosine from the
    current rate to ``eta_min`` at ``epochs``.) Other schedules are left alone.
    """
    import torch

    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        scheduler.T_max = epochs


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
