"""A run folder's life, shared by both trainers: start it, resume it, keep its checkpoints consistent.

- :func:`start_run_dir` refuses a folder that already holds a run unless ``overwrite`` (then it removes
  that run's files first), so a new run never silently replaces an old one.
- A run holds its folder's lock (:func:`lock_run_dir`, ``.run.lock`` made with an exclusive create and
  holding the PID) for its whole life, so two processes never run in one folder: the second start is
  refused naming the holder's PID, and the lock of a process that died is taken over with a warning.
  :func:`release_run_locks` gives up this process's locks when the run ends.
- :func:`resume_config` takes the recipe from the checkpoint: a field the user set that contradicts it is
  refused, naming both values; ``epochs`` may be raised, and the fields of where and how to run (the data
  folder, the device, when to stop) may differ. The run stays in its folder.
- :func:`remove_stale_temp_files` deletes what a kill during an atomic write left behind.
- :func:`removed_if_unstarted` deletes a run folder whose start failed (no data, a refused table) when
  this process made it and it holds nothing but its log and lock: no empty folders are left behind.
- :class:`Progress` is where a run stands (what its checkpoint records of it), :func:`end_epoch`
  where this invocation stops, :data:`USER_ERRORS` the errors an entry script reports in one line.
- :func:`repair_best` makes ``best.pth`` agree with ``last.pth``: ``last.pth`` is written first and
  records the best epoch, so a kill while ``best.pth`` was being written leaves a ``last.pth`` that is
  itself the best checkpoint, and the resumed run copies it.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import dataclasses
import io
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from .checkpoint import CheckpointError, copy_checkpoint, load_checkpoint
from .config_utils import ConfigError, config_from_dict, given_fields
from .curves import CURVES_FILE
from .dataloaders import DataError
from .distributed import DistContext, run_on_main
from .interrupts import Interrupted
from .io_utils import DiskFullError, atomic_write_text
from .logging_utils import close_log_files

__all__ = [
    "HOW_TO_RUN",
    "ONE_INVOCATION",
    "USER_ERRORS",
    "Progress",
    "RunExistsError",
    "RunLockedError",
    "RunStopped",
    "check_run_name",
    "end_epoch",
    "extend_cosine",
    "lock_run_dir",
    "new_run_dir",
    "release_run_locks",
    "remove_stale_temp_files",
    "remove_unstarted_run",
    "removed_if_unstarted",
    "repair_best",
    "resume_hint",
    "resume_config",
    "resume_run",
    "start_run_dir",
    "steps_from_one",
    "tidy_resumed_run",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# files the trainers write into a run folder; any of the first group means the folder holds a run
RUN_MARKERS = ("last.pth", "best.pth", "config.json", "metrics.csv", "thetas.json", "arch.json")
CHECKSUMS = ("last.pth.sha256", "best.pth.sha256")  # see checkpoint.save_checkpoint
RUN_FILES = (*RUN_MARKERS, *CHECKSUMS, "lut.json", "log.txt", "summary.json", CURVES_FILE)
LOCK_FILE = ".run.lock"
_MAX_NAME = 200
# atomic_write's temporary files: ".<name>.<random>.tmp" beside <name>
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


class RunExistsError(FileExistsError):
    """A new run was pointed at a folder that already holds one."""


class RunStopped(RuntimeError):
    """A run that cannot go on (a non-finite loss); the message says where and how to resume."""


@dataclasses.dataclass
class Progress:
    """Where a run stands: epochs done, the best top-1 so far and its epoch (counted from 1), the last
    epoch's metrics, and the wall time of every process that worked on the run."""

    epoch: int = 0
    best_top1: float = -math.inf
    best_epoch: int | None = None
    last: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0

    @classmethod
    def of(cls, state: dict[str, Any], **more: Any) -> Progress:
        """The progress a checkpoint records (``more``: a subclass's own fields)."""
        return cls(
            state["epoch"],
            state["best_top1"],
            state.get("best_epoch"),
            dict(state.get("last_metrics") or {}),
            state.get("wall_s", 0.0),
            **more,
        )


def end_epoch(cfg: Any) -> int:
    """The epoch this invocation stops after: ``--epochs``, or ``--stop_after_epoch`` when sooner."""
    return min(cfg.epochs, cfg.stop_after_epoch) if cfg.stop_after_epoch else cfg.epochs


# Errors that come from what the user passed (files, names, settings) or a full disk: the entry
# scripts print their message in one line, without a traceback.
USER_ERRORS = (
    CheckpointError,
    ConfigError,
    DataError,
    DiskFullError,
    FileExistsError,
    FileNotFoundError,
    KeyError,
    RunStopped,
    ValueError,
)


def resume_hint(run_dir: str | Path) -> str:
    """How to continue the run in ``run_dir`` from its last checkpoint."""
    last = Path(run_dir) / "last.pth"
    if last.is_file():
        return f"continue with --resume {last}"
    return f"no checkpoint was written yet ({last}): start the run again"


@contextlib.contextmanager
def stops_in_one_line(run_dir: str | Path, epoch: int, where: str = "") -> Iterator[None]:
    """Inside an epoch: a non-finite loss becomes :class:`RunStopped` ("stopped<where>: ...") and a
    signal an :class:`Interrupted` naming ``epoch`` and its step; both say how to resume."""
    try:
        yield
    except FloatingPointError as err:  # the last checkpoint is the last good epoch
        raise RunStopped(f"stopped{where}: {err}; {resume_hint(run_dir)}") from None
    except Interrupted as err:
        raise Interrupted(
            err.signum,
            message=f"interrupted at epoch {epoch} step {err.step} ({err.phase}); "
            + resume_hint(run_dir),
        ) from None


class RunLockedError(FileExistsError):
    """Another live process holds the run folder's lock."""


def check_run_name(name: str, what: str = "run name") -> None:
    """Refuse a folder name that would leave its root: separators, ``.``/``..``, NUL, too long."""
    bad = (
        not name
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name in (".", "..")
        or len(name) > _MAX_NAME
    )
    if bad:
        raise ValueError(
            f"{what} {name!r} must be one folder name: no path separators, not '.' or '..', "
            f"at most {_MAX_NAME} characters"
        )


def start_run_dir(log_dir: str | Path, run_name: str, prefix: str, overwrite: bool = False) -> Path:
    """``log_dir/run_name`` (time-stamped when no name is given), locked and ready for a new run.

    A folder that already holds a run (:data:`RUN_MARKERS`) is refused unless ``overwrite``; then the
    run's own files (:data:`RUN_FILES`, ``tb/``) are deleted first and nothing else is touched. The
    folder's lock (:func:`lock_run_dir`) is taken before the folder is looked at, so of two processes
    given the same name only one can pass the check. A time-stamped name is claimed by creating its
    folder: a second run started in the same second gets ``_2``, ``_3``...
    """
    check_run_name(prefix, "run-name prefix (the architecture's name)")
    root = Path(log_dir)
    made = _missing_folders(root)  # see remove_unstarted_run
    if run_name:
        check_run_name(run_name)
        run_dir = root / run_name
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            run_dir.mkdir()
            _MADE[run_dir] = [*made, run_dir]
    else:
        run_dir = _claim_stamped(root, f"{prefix}_{datetime.now():%Y%m%d_%H%M%S}")
        _MADE[run_dir] = [*made, run_dir]
    lock_run_dir(run_dir)
    try:
        _make_ready(run_dir, overwrite)
    except BaseException:
        release_run_locks()
        raise
    return run_dir


def _missing_folders(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, outermost first."""
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    return missing[::-1]


def _claim_stamped(root: Path, stamp: str) -> Path:
    """A new folder ``root/stamp`` (or ``stamp_2``, ``stamp_3``...), made here and by no one else."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        run_dir = root / (stamp if i == 1 else f"{stamp}_{i}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise RunExistsError(f"{root} already holds 999 runs named {stamp}*; pass --run_name")


def _make_ready(run_dir: Path, overwrite: bool) -> None:
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
    remove_stale_temp_files(run_dir)


# the lock files this process holds (released by release_run_locks, at the latest at exit)
_HELD: list[Path] = []
# run folders this process made (start_run_dir) -> the folders made for each, outermost first
_MADE: dict[Path, list[Path]] = {}
# what a run folder holds before its run has written anything: a failed start leaves only these
_START_FILES = ("log.txt", LOCK_FILE)


@contextlib.contextmanager
def removed_if_unstarted(run_dir: str | Path) -> Iterator[None]:
    """On an error inside the block, :func:`remove_unstarted_run` ``run_dir``; then re-raise."""
    try:
        yield
    except BaseException:
        remove_unstarted_run(run_dir)
        raise
    _MADE.pop(Path(run_dir), None)


def remove_unstarted_run(run_dir: str | Path) -> bool:
    """Delete ``run_dir`` if this process made it and it holds nothing but its log and lock.

    A run that stops before writing any file (a missing data set, a refused table) so leaves no
    empty folder behind. A folder made by someone else, or holding anything more, is left alone;
    the parent folders made for it go too when they are empty. True when ``run_dir`` was deleted.
    """
    run_dir = Path(run_dir)
    made = _MADE.pop(run_dir, None)
    if made is None or not run_dir.is_dir():
        return False
    if any(path.name not in _START_FILES for path in run_dir.iterdir()):
        return False
    close_log_files(run_dir)
    (run_dir / "log.txt").unlink(missing_ok=True)
    release_run_locks(run_dir)
    for folder in reversed(made):
        try:
            folder.rmdir()  # only when empty: a file that appeared meanwhile keeps it
        except OSError:
            break
    return not run_dir.exists()


def lock_run_dir(run_dir: str | Path) -> None:
    """Take ``run_dir``'s lock for this process, or raise :class:`RunLockedError` naming its holder.

    The lock is the file :data:`LOCK_FILE`, made with ``O_CREAT | O_EXCL`` (only one process can make
    it) and holding the holder's PID. A lock whose process is gone is taken over with a warning.
    """
    path = Path(run_dir) / LOCK_FILE
    if path in _HELD:
        return
    for _ in range(3):  # a takeover races with other starts: each try is an exclusive create
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_holder(path)
            if pid is not None and _alive(pid):
                raise RunLockedError(
                    f"run folder {path.parent} is in use by process {pid} (its lock {path}); "
                    "wait for it to end or choose another --run_name"
                ) from None
            logger.warning(
                "run folder %s: taking over the lock of process %s, which is no longer running",
                path.parent,
                pid if pid is not None else "(unreadable)",
            )
            _remove_if_unchanged(path, pid)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        _HELD.append(path)
        return
    raise RunLockedError(f"run folder {path.parent}: could not take its lock {path}")


def _lock_holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # vanished, or written half-way by a process that died


def _alive(pid: int) -> bool:
    """True when ``pid`` is a running process other than this one's stale record."""
    if pid == os.getpid():
        return False  # a lock of this process that is not in _HELD was left by an earlier run
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _remove_if_unchanged(path: Path, pid: int | None) -> None:
    """Delete a stale lock, unless another process has taken it over meanwhile."""
    if _lock_holder(path) == pid:
        path.unlink(missing_ok=True)


def release_run_locks(run_dir: str | Path | None = None) -> None:
    """Give up every run-folder lock this process holds (or only that of ``run_dir``)."""
    for path in list(_HELD):
        if run_dir is not None and path.parent != Path(run_dir):
            continue
        _HELD.remove(path)
        if _lock_holder(path) == os.getpid():
            path.unlink(missing_ok=True)


atexit.register(release_run_locks)


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
    copy_checkpoint(run_dir / "last.pth", best_path)
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
    """What a kill may have left: temporary files, and a best.pth older than last.pth says; and the
    metrics.csv of a search begun by code that counted its steps from 0."""
    remove_stale_temp_files(run_dir, log)
    repair_best(run_dir, state, log)
    steps_from_one(run_dir / "metrics.csv", log)


def steps_from_one(path: Path, log: logging.Logger = logger) -> bool:
    """Renumber a metrics.csv whose steps start at 0 (searches written with checkpoint format 1) so
    that step N is the N-th epoch, as the run goes on writing it; a file starting at 1 is left alone.
    TensorBoard's event files keep their old steps."""
    if not path.is_file():
        return False
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), reader.fieldnames or []
    if not rows or "step" not in columns or int(float(rows[0]["step"])) != 0:
        return False
    for row in rows:
        row["step"] = str(int(float(row["step"])) + 1)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    log.info("%s: steps renumbered from 1 (epochs done), as this code writes them", path)
    return True


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
